"""The render as a figure: round scale-bar lengths, legend swatches, the bar's length."""

import numpy as np
import pytest

from famous_addon.core.figure import LegendEntry, annotate, length_label, nice_length


@pytest.mark.parametrize(
    "span, length", [(10.0, 2.0), (3.7, 0.5), (0.9, 0.1), (26.0, 5.0), (50.0, 10.0)]
)
def test_the_bar_is_a_round_length_of_at_most_a_fifth_of_the_view(span, length):
    assert nice_length(span) == pytest.approx(length)


def test_lengths_read_as_a_biologist_writes_them():
    assert [length_label(v) for v in (0.2, 0.5, 1.0, 20.0)] == ["200 nm", "500 nm", "1 µm", "20 µm"]
    with pytest.raises(ValueError):
        nice_length(0.0)


def test_legend_swatches_in_class_colours_and_a_bar_of_the_given_length():
    image = np.full((720, 1280, 4), (20, 20, 25, 255), np.uint8)
    legend = [
        LegendEntry("mitochondria", (213 / 255, 94 / 255, 0.0), 12),
        LegendEntry("nucleus", (0.0, 114 / 255, 178 / 255), 1),
    ]
    out = annotate(image, legend, bar_px=237.0, bar_label="1 µm", title="cell 3")
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (image == (20, 20, 25, 255)).all(), "the input is left as it was"
    for entry in legend:
        colour = np.round(np.array(entry.rgb) * 255)
        swatch = (out[..., :3] == colour).all(axis=-1)
        ys, xs = np.nonzero(swatch)
        assert swatch.sum() >= 200 and xs.min() > 1280 * 0.6 and ys.max() < 720 * 0.3
    # the bar: the longest run of light pixels on a row near the bottom
    light = (out[600:, :, :3] > 200).all(axis=-1)
    runs = [np.diff(np.flatnonzero(np.diff(np.r_[0, row, 0]))) for row in light.astype(int)]
    longest = max((r[::2].max() if len(r) else 0) for r in runs)
    assert abs(longest - 237) <= 1
    assert (out[..., 3] == 255).all()
    # no legend, no bar, no title: the image as it was
    assert (annotate(image, [], None) == image).all()
