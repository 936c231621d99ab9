"""The bpy-free FAMOUS pipeline: stack I/O, detection, extraction, linking,
point clouds, run folders, quantification and comparison (map: docs/design.md, "Layout")."""
