"""FAMOUS for Blender: segment, mesh and quantify organelles in volume EM stacks.

Only ``register``/``unregister`` live here. Blender modules are imported inside
them so that ``famous_addon.core`` stays importable without Blender.
"""

from .core.version import __version__

__all__ = ["__version__", "register", "unregister"]


def register():
    from . import ui  # bpy: only inside Blender, so that the core imports without it

    ui.register()


def unregister():
    from . import ui  # (as in register)

    ui.unregister()
