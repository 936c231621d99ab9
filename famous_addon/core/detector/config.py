"""A training run's settings, and the check that the ``train`` extra is installed.

Torch-free, so that the command line and the Blender panel can build a
:class:`TrainConfig` and explain a missing PyTorch before they import the
trainer (:mod:`.train`), which needs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import FamousError

PRECISIONS = ("auto", "fp32", "bf16")


def require_torch():
    """Import torch, or explain how to get it.

    Returns
    -------
    module
        ``torch``.

    Raises
    ------
    FamousError
        Naming the ``train`` extra, when PyTorch is not installed.
    """
    try:
        import torch  # torch: the optional train extra, which this checks for
    except ImportError:
        raise FamousError(
            "training needs PyTorch, which is not installed.",
            fix="pip install 'famous-blender[train]' (CPU torch is enough).",
        ) from None
    return torch


# Passes of 16 batches. 200, not 60: on real EM the longer training boxes large
# and border organelles better (volume overlap, two seeds: lucchi 0.886 -> 0.920,
# CDeep3M 0.650 -> 0.720), with object F1 up on CDeep3M (0.646 -> 0.693) and
# within one object on lucchi, now that boxes side by side no longer merge
# neighbours (docs/results.md, session 32); 11-12 minutes on two cores.
DEFAULT_EPOCHS = 200


@dataclass
class TrainConfig:
    """Settings of one training run (stored in the checkpoint and the report)."""

    epochs: int = DEFAULT_EPOCHS
    width: str = "slim"
    heads: int = 2
    input_size: int = 416
    train_size: int = 256
    batch: int = 8
    steps_per_epoch: int = 16
    lr: float = 2e-3
    weight_decay: float = 5e-4
    val_fraction: float = 0.2
    seed: int = 0
    threads: int = 0
    device: str = "cpu"
    workers: int = 2
    init: str = ""
    flip_views: int = 1
    neighbours: bool = False
    small_focus: float = 0.0
    large_focus: float = 0.0
    ema: bool = True
    precision: str = "auto"
    zoom_pass: dict[str, float] = field(default_factory=dict)

    def key(self) -> dict:
        """The settings a checkpoint must share to be resumed (not where it runs or infers)."""
        skip = ("threads", "device", "workers", "flip_views", "precision", "zoom_pass")
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class PseudoShare:
    """How :class:`CropSampler` mixes pseudo-labelled images with the user's.

    Attributes
    ----------
    first : int
        Index of the first pseudo-labelled image (all before are the user's).
    share : float
        Share of the crops drawn from pseudo-labelled images. The user's
        slices alone teach the background, so they keep the rest.
    weight : float
        Loss weight of a pseudo-box against a user's box (1).
    background : bool
        The pseudo-labelled images come with the regions to leave out of the
        loss (class -1 rows), and the rest of them is taught as background.
        Without, nothing on them is.
    """

    first: int
    share: float = 0.5
    weight: float = 0.5
    background: bool = False
