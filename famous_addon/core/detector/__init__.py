"""The detector stage: YOLOv4-tiny boxes on each slice, and training it.

Inference runs without torch, through OpenCV's Darknet importer:

- :mod:`.darknet` — the model folder's files, Darknet ``.cfg`` parsing and
  the cfg/weights check, the YOLOv4-tiny cfg ``famous train`` writes;
- :mod:`.settings` — :class:`~.settings.DetectSettings`, the model's ``thresholds.json``;
- :mod:`.boxops` — box overlaps, thresholds, suppression, fusion of views, merging of cut boxes;
- :mod:`.inference` — :func:`~.inference.load_detector` and the tiled
  :class:`~.inference.Detector`;
- :mod:`.evaluate` — mAP@0.5, precision and recall against truth boxes;
- :mod:`.calibrate` — per-class thresholds chosen on annotated slices
  (``famous recalibrate``);
- :mod:`.annotated` — reading the annotated slices and their held-out split;
- :mod:`.config` — :class:`~.config.TrainConfig` and the check that torch is installed.

Training needs the ``train`` extra (torch, imported at the top of these
modules, which are imported only where training is asked for):

- :mod:`.model` — the network in PyTorch, built from its Darknet cfg;
- :mod:`.loss` — the YOLO loss;
- :mod:`.data` — anchors and augmented random crops;
- :mod:`.train` — :func:`~.train.train_model`, the training loop and export.
"""
