"""Shared pytest set-up. Blender fixtures live in blender_fixtures.py."""

import os
import tempfile

# Blender reads this when bpy is first imported: keep test runs away from the
# user's own extensions.
os.environ.setdefault("BLENDER_USER_EXTENSIONS", tempfile.mkdtemp(prefix="famous-ext-"))

pytest_plugins = ["blender_fixtures"]
