"""The add-on's preferences: a Python to train in, where Blender has no PyTorch.

Blender ships no PyTorch, and an extension may not install packages while it
runs. Training from the panel therefore runs in Blender where PyTorch is
importable there, and otherwise in the Python set here: one where FAMOUS is
installed with its train extra (the ``.venv/bin/python`` that ``make`` builds,
or any ``pip install 'famous-blender[train]'``). The panel then starts
``famous train`` in it (:func:`~famous_addon.ui.train.train_elsewhere`).
"""

from __future__ import annotations

import bpy
from bpy.props import StringProperty

# the add-on's package: "famous_addon", or "bl_ext.<repository>.famous" when installed
ADDON = __package__.rpartition(".")[0]


class FAMOUS_AP_preferences(bpy.types.AddonPreferences):
    bl_idname = ADDON

    train_python: StringProperty(
        name="Python for training",
        description="A Python with FAMOUS and PyTorch (e.g. the .venv/bin/python `make` "
        "builds); the Train button runs `famous train` in it when Blender has no PyTorch",
        subtype="FILE_PATH",
    )

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "train_python")
        layout.label(text="Used by Train only where Blender itself has no PyTorch.")


def train_python(context) -> str:
    """The preferences' Python for training, as an absolute path ("" when unset)."""
    addon = context.preferences.addons.get(ADDON)
    if addon is None or addon.preferences is None:
        return ""  # registered without being enabled (tests): no preferences
    path = addon.preferences.train_python
    return bpy.path.abspath(path) if path else ""


def register():
    bpy.utils.register_class(FAMOUS_AP_preferences)


def unregister():
    bpy.utils.unregister_class(FAMOUS_AP_preferences)
