"""A render made into a figure a user can paste into a slide: title, class legend, scale bar.

Drawn with Pillow on the rendered image, in matplotlib's DejaVu Sans (both
ship with FAMOUS for its plots; the font has the µ of µm), so it needs no
Blender and is the same wherever the render came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TEXT = (235, 235, 235)  # light grey on the render's dark background


@dataclass(frozen=True)
class LegendEntry:
    """One class in the legend: its name, sRGB colour (0..1) and organelle count."""

    name: str
    rgb: tuple[float, float, float]
    count: int

    @property
    def text(self) -> str:
        return f"{self.name.replace('_', ' ')} ({self.count})"


def nice_length(span: float, fraction: float = 0.2) -> float:
    """A round length (1, 2 or 5 times a power of ten) of at most ``fraction`` of ``span``."""
    if not span > 0:
        raise ValueError(f"span must be positive, not {span}")
    target = span * fraction
    power = 10.0 ** math.floor(math.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target * (1 + 1e-9))


def length_label(um: float) -> str:
    """``200 nm``, ``1 µm``, ``20 µm``: a length as a biologist writes it."""
    if um < 1:
        return f"{um * 1000:.3g} nm"
    return f"{um:.3g} µm"


def annotate(
    image: np.ndarray,
    legend: Sequence[LegendEntry],
    bar_px: float | None = None,
    bar_label: str = "",
    title: str = "",
) -> np.ndarray:
    """The image with a title (top left), legend (top right) and scale bar (bottom left).

    Parameters
    ----------
    image : (H, W, 3 or 4) uint8 array
        The render, RGB(A).
    legend : sequence of LegendEntry
        Classes in legend order: a swatch in the class colour, its name and count.
    bar_px : float, optional
        Scale bar length in pixels (None or under 2: no bar).
    bar_label : str
        What the bar measures, written above it (e.g. ``1 µm``).
    title : str
        For example the run's name.

    Returns
    -------
    array
        An annotated copy; text size follows the image height.
    """
    # Pillow and matplotlib load when a figure is drawn, not with the add-on
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    h, w = image.shape[:2]
    line = max(12, int(round(h / 24)))
    pad = line // 2 + 4
    font, big = _font(int(line * 0.7)), _font(int(line * 0.85))
    opaque = (255,) if image.shape[2] == 4 else ()
    if title:
        draw.text((pad, pad), title, font=big, fill=TEXT + opaque)
    if legend:
        width = max(draw.textlength(e.text, font=font) for e in legend)
        x = w - pad - int(width) - line
        for i, e in enumerate(legend):
            y = pad + i * line
            swatch = tuple(int(round(255 * c)) for c in e.rgb) + opaque
            draw.rectangle((x, y + line // 6, x + int(line * 0.6), y + line - line // 6), swatch)
            draw.text((x + line, y + line // 8), e.text, font=font, fill=TEXT + opaque)
    if bar_px is not None and bar_px >= 2:
        y = h - pad - line // 4
        draw.rectangle((pad, y - max(3, line // 8), pad + int(round(bar_px)), y), TEXT + opaque)
        draw.text((pad, y - line - line // 8), bar_label, font=font, fill=TEXT + opaque)
    return np.asarray(img)


def _font(size: int):
    # see annotate: loaded when a figure is drawn
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
