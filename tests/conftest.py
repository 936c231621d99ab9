"""Shared pytest set-up. Blender fixtures live in blender_fixtures.py."""

import atexit
import os
import shutil
import tempfile

# Blender reads this when bpy is first imported: keep test runs away from the
# user's own extensions.
if "BLENDER_USER_EXTENSIONS" not in os.environ:
    _extensions = tempfile.mkdtemp(prefix="famous-ext-")
    os.environ["BLENDER_USER_EXTENSIONS"] = _extensions
    atexit.register(shutil.rmtree, _extensions, ignore_errors=True)

pytest_plugins = ["blender_fixtures"]
