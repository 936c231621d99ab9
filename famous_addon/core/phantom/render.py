"""How a phantom slice looks: the sample's grey values, then blur, shift and noise.

The look is that of the paper's (inverted, TEM-like) FIB-SEM data: mid-grey
granular cytoplasm crossed by thin dark ER membranes; a large dark, textured
nucleus with heterochromatin and envelope; dark mitochondria with lighter
cristae; light early endosomes with a dark rim; dark late endosomes;
lysosomes only slightly darker than the cytoplasm and speckled.
:func:`draw_sample` paints the sample and its truth labels on the slice
canvas; :func:`acquire` turns that into the recorded image: blurred, shifted
by the slice's FIB-SEM misalignment (image and truth alike), and noisy.
"""

from __future__ import annotations

import cv2
import numpy as np

from .geometry import Ellipsoid, Grid, Tube
from .organelles import EARLY_ENDOSOME, LATE_ENDOSOME, LYSOSOME, NUCLEUS, Organelle
from .texture import TAG_COARSE, TAG_FINE, TAG_MID, Texture

# Grey values (0..255) before blur and noise; FIB-SEM data as the paper shows
# it: inverted so that membranes and dense matter are dark.
_CYTOPLASM = 150.0
_NOISE_STD = 11.0
_BLUR_SIGMA_PX = 1.0
# A stained membrane as FIB-SEM shows it (a bilayer is ~7 nm; staining and
# the beam spread it); the truth mask includes it, as an annotator's would.
_MEMBRANE_UM = 0.012


def draw_sample(
    texture: Texture,
    objects: list[Organelle],
    er: list[dict],
    vesicles: np.ndarray,
    z: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The sample on the slice at ``z`` µm, on the canvas, before the microscope.

    Parameters
    ----------
    texture : Texture
        The phantom's noise fields (their canvas is the slice's).
    objects : list of Organelle
        The organelles that may cross the slice, drawn in this order (an
        earlier one keeps the pixels it shares with a later one).
    er, vesicles
        The unlabelled ER sheets and vesicles of :class:`~.placement.Layout`.
    z : float
        Slice position in µm.

    Returns
    -------
    image : ndarray (height, width) float32
        Grey values on the canvas.
    labels : ndarray (height, width) uint16
        Organelle ids on the canvas (0 = none).
    """
    g = texture.grid
    fields = {
        "fine": texture.noise(TAG_FINE, z, 0.02),
        "mid": texture.noise(TAG_MID, z, 0.08),
    }
    coarse = texture.noise(TAG_COARSE, z, 0.6)
    img = (_CYTOPLASM + 7.0 * coarse + 6.0 * fields["mid"] + 5.0 * fields["fine"]).astype(
        np.float32
    )
    # ribosome-like dark grains
    img[fields["fine"] < -1.7] -= 22.0
    _draw_er(img, z, er, g)
    _draw_vesicles(img, z, vesicles, g)
    lab = np.zeros((g.height, g.width), np.uint16)
    for o in objects:
        _draw(o, z, img, lab, fields, g)
    return img, lab


def acquire(
    image: np.ndarray,
    labels: np.ndarray,
    shift: np.ndarray,
    noise_rng: np.random.Generator | None = None,
    curtain: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The recorded slice of a drawn canvas: blurred, shifted, noisy and cut to the image.

    Parameters
    ----------
    image, labels : ndarray (Y + 2, X + 2)
        The canvas from :func:`draw_sample`.
    shift : (dy, dx) int
        The slice's misalignment, -1, 0 or 1 pixel each; the labels move too.
    noise_rng : numpy.random.Generator, optional
        The slice's noise stream; without it no detector noise, brightness
        drift or curtains are added.
    curtain : ndarray (X + 2,), optional
        The slice's curtain streak profile (:meth:`Texture.curtain`), with
        ``noise_rng``.

    Returns
    -------
    image : ndarray (Y, X) uint8
    labels : ndarray (Y, X) uint16
    """
    img = cv2.GaussianBlur(image, (0, 0), _BLUR_SIGMA_PX)
    dy, dx = shift
    Y, X = image.shape[0] - 2, image.shape[1] - 2
    rows = slice(1 - dy, 1 - dy + Y)
    cols = slice(1 - dx, 1 - dx + X)
    img, lab = img[rows, cols], labels[rows, cols].copy()
    if noise_rng is not None:
        # detector noise, a small brightness drift from slice to slice and
        # the faint vertical streaks ("curtains") of FIB milling
        rng = noise_rng
        img = img + _NOISE_STD * rng.standard_normal(img.shape, dtype=np.float32)
        img += rng.normal(0.0, 1.5) + 2.5 * curtain[None, 1 - dx : 1 - dx + X]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), lab


def _draw_er(img: np.ndarray, z: float, er: list[dict], g: Grid) -> None:
    """Darken the ER membranes crossing the slice at ``z`` (anti-aliased lines)."""
    mask = np.zeros(img.shape, np.uint8)
    thick = max(1, int(round(0.02 / g.px)))
    for sheet in er:
        if not sheet["z"][0] <= z <= sheet["z"][1]:
            continue
        pts = sheet["points"] + sheet["drift"] * (z - sheet["z0"])
        lines = [pts]
        if sheet["double"]:
            lines.append(pts + sheet["normal"] * 0.045)
        for line in lines:
            # canvas (col, row) with 4 fractional bits for sub-pixel lines
            xy = np.stack([line[:, 1] / g.px + 1, line[:, 0] / g.py + 1], axis=1)
            cv2.polylines(
                mask, [np.rint(xy * 16).astype(np.int32)], False, 255, thick, cv2.LINE_AA, 4
            )
    img -= mask.astype(np.float32) * (55.0 / 255.0)


def _draw_vesicles(img: np.ndarray, z: float, vesicles: np.ndarray, g: Grid) -> None:
    """Paint the vesicles crossing the slice at ``z``: a dark rim, a light or dense lumen."""
    ves = vesicles
    for cz, cy, cx, r, dense in ves[np.abs(ves[:, 0] - z) < ves[:, 3]]:
        sec = Ellipsoid((cz, cy, cx), (r, r, r)).section(z, g)
        if sec is None:
            continue
        (r0, r1), (c0, c1), rho2 = sec
        depth = (1.0 - np.sqrt(np.minimum(rho2, 1.0))) * r
        val = np.where(depth < _MEMBRANE_UM, 80.0, 95.0 if dense else 185.0)
        sub = img[r0:r1, c0:c1]
        sub[rho2 <= 1.0] = val[rho2 <= 1.0]


def _paste(o, rows, cols, inside, values, img, lab) -> None:
    """Paint ``values`` where ``inside`` and no other organelle was drawn first."""
    (r0, r1), (c0, c1) = rows, cols
    sub = lab[r0:r1, c0:c1]
    m = inside & ((sub == 0) | (sub == o.id))
    sub[m] = o.id
    img[r0:r1, c0:c1][m] = values[m]


def _draw(o: Organelle, z: float, img, lab, fields, g: Grid) -> None:
    """Paint organelle ``o``'s section at ``z`` and write its id to the labels."""
    off = o.look.get("offset", 0.0)
    for part in o.parts:
        if isinstance(part, Tube):
            sec = part.section(z, g, inset=0.025)
            if sec is None:
                continue
            rows, cols, idx, core = sec
            (r0, r1), (c0, c1) = rows, cols
            fine = fields["fine"][r0:r1, c0:c1]
            mid = fields["mid"][r0:r1, c0:c1]
            inside = idx >= 0
            val = np.full(idx.shape, 78.0 + off, np.float32) + 6.0 * mid + 4.0 * fine
            # arc length along the tube's axis, so that cristae cross it
            ii = np.where(core >= 0, core, 0)
            dy = g.coords(r0, r1, 0)[:, None] - part.points[ii, 1]
            dx = g.coords(c0, c1, 1)[None, :] - part.points[ii, 2]
            s = part.arc[ii] + dy * part.tangents[ii, 1] + dx * part.tangents[ii, 2]
            wave = np.cos(2 * np.pi * s / o.look["period"] + o.look["phase"] + 0.8 * mid)
            cristae = (core >= 0) & (wave + 0.3 * fine > 0.45)
            val[cristae] = 128.0 + off + 6.0 * fine[cristae]
            val[inside & (core < 0)] = 52.0 + off
            _paste(o, rows, cols, inside, val, img, lab)
        else:
            sec = part.section(z, g)
            if sec is None:
                continue
            rows, cols, rho2 = sec
            (r0, r1), (c0, c1) = rows, cols
            inside = rho2 <= 1.0
            if not inside.any():
                continue
            fine = fields["fine"][r0:r1, c0:c1]
            mid = fields["mid"][r0:r1, c0:c1]
            # depth below the surface, µm (exact for spheres, close for ellipsoids)
            depth = (1.0 - np.sqrt(rho2)) * min(part.axes[1:])
            val = _look(o.cls, depth, fine, mid, off)
            _paste(o, rows, cols, inside, val, img, lab)


def _look(cls: int, depth, fine, mid, off) -> np.ndarray:
    """Grey values of an ellipsoid organelle of class ``cls`` at ``depth`` µm below its surface."""
    if cls == NUCLEUS:
        val = 98.0 + off + 12.0 * mid + 6.0 * fine
        hetero = (depth < 0.15) & (mid > -0.4)
        val = np.where(hetero, 72.0 + off + 6.0 * fine, val)
        val = np.where(depth < 1.5 * _MEMBRANE_UM, 55.0, val)
        return val.astype(np.float32)
    if cls == EARLY_ENDOSOME:
        val = 200.0 + off + 6.0 * fine
        return np.where(depth < _MEMBRANE_UM, 70.0, val).astype(np.float32)
    if cls == LATE_ENDOSOME:
        val = 84.0 + off + 8.0 * mid + 5.0 * fine
        val = np.where(mid > 1.0, val + 28.0, val)  # intraluminal vesicles
        return np.where(depth < _MEMBRANE_UM, 60.0, val).astype(np.float32)
    if cls == LYSOSOME:
        val = 136.0 + 0.5 * off + 14.0 * fine
        val = np.where(fine < -1.0, val - 28.0, val)
        return np.where(depth < _MEMBRANE_UM, 124.0, val).astype(np.float32)
    raise ValueError(cls)
