"""Scene building with bpy: organelle meshes, collections, materials, rendering."""
