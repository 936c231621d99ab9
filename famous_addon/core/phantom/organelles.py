"""The phantom's organelle classes and :class:`Organelle`, one ground-truth object.

Class indices follow the ``fibsem`` preset's order, so the phantom's boxes and
truth use the class config ``famous phantom`` writes beside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .geometry import Tube

EARLY_ENDOSOME, LATE_ENDOSOME, MITOCHONDRIA, LYSOSOME, NUCLEUS = range(5)
CLASS_NAMES = ("early_endosome", "late_endosome", "mitochondria", "lysosome", "nucleus")


@dataclass
class Organelle:
    """One ground-truth organelle of the phantom.

    Attributes
    ----------
    id : int
        Its value in the truth label volume (1..N).
    cls : int
        Class index in the ``fibsem`` preset's order.
    name : str
        Class name.
    kind : str
        ``"nucleus"``, ``"tube"`` (mitochondrion), ``"dumbbell"`` (the
        mitochondrion with a thin bridge), ``"ellipsoid"``.
    parts : list
        Its :class:`Ellipsoid` / :class:`Tube` parts, in µm.
    touching : int or None
        Id of the organelle it was placed 0-1 voxel from, if any.
    look : dict
        Appearance parameters (brightness offset, cristae period and phase).
    """

    id: int
    cls: int
    name: str
    kind: str
    parts: list
    touching: int | None = None
    look: dict = field(default_factory=dict)

    @property
    def z_range(self) -> tuple[float, float]:
        lo, hi = [], []
        for p in self.parts:
            if isinstance(p, Tube):
                lo.append(p.lo[0])
                hi.append(p.hi[0])
            else:
                lo.append(p.center[0] - p.axes[0])
                hi.append(p.center[0] + p.axes[0])
        return min(lo), max(hi)
