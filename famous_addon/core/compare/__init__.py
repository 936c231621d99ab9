"""Compare instance segmentations object by object (the paper's Tables 1-7).

A is the segmentation under test (automatic), B the reference (manual / ground
truth). The stage is split by job:

- :mod:`.stl`: manual segmentations as STL meshes: reading, classes, units,
  voxelisation onto a :class:`~.stl.Grid`.
- :mod:`.segmentations`: run folders, label TIFFs and STL inputs on one
  comparison grid (lazy reading and regridding).
- :mod:`.score`: overlap counting, Hungarian matching and per-class scores
  (precision, recall, F1, Jaccard, volume overlap, Dice, split adjustment).
- :mod:`.comparison`: every pair of several segmentations scored at once.
- :mod:`.tables`, :mod:`.plots`, :mod:`.report`: the CSV tables, the figures
  and the Markdown/HTML report.
- :mod:`.run`: the runners behind ``famous compare``, the Blender panel and
  ``run_famous.py --compare``.
- :mod:`.annotator`: a simulated second annotator for the demo and tests.
"""
