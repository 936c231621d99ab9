"""Property-based tests of the parsers of user files: only a FamousError ever escapes.

The YOLO box parser (text and bytes), the Darknet cfg parser, the class-config
loader (TOML text and bytes, JSON-like tables, ``obj.names``) and the
``--slices`` parser get arbitrary and near-valid input from hypothesis; each
must return a valid result or raise :class:`FamousError`, never another
exception. Bounded to a few seconds in all.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from famous_addon.core.annotations import parse_slice_list
from famous_addon.core.boxes import parse_yolo_lines
from famous_addon.core.classes import load_classes, parse_config
from famous_addon.core.detector.darknet import cfg_info, parse_cfg_text
from famous_addon.core.errors import FamousError

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

_numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**20), 10**20).map(str),
    st.sampled_from(["0", "1", ".5", "-0", "1e999", "nan", "0x10", "1_0", "", "٣"]),
)


def _only_famous_errors(call):
    try:
        return call()
    except FamousError as exc:
        assert exc.message and "\n" not in exc.message
        return None


@FUZZ
@given(
    lines=st.lists(
        st.one_of(st.lists(_numbers, max_size=7).map(" ".join), st.text(max_size=40)), max_size=6
    ),
    shape=st.tuples(st.integers(1, 300), st.integers(1, 300)),
)
def test_box_text_gives_boxes_with_pixels_or_a_famous_error(lines, shape):
    boxes = _only_famous_errors(lambda: parse_yolo_lines("\n".join(lines), shape, 5, "b.txt"))
    for box in boxes or []:
        x0, y0, x1, y1 = box.pixel_bounds(shape)
        assert x1 > x0 and y1 > y0 and 0 <= box.cls < 5 and 0 <= box.score <= 1


@FUZZ
@given(data=st.binary(max_size=200))
def test_box_bytes_give_boxes_or_a_famous_error(data):
    _only_famous_errors(lambda: parse_yolo_lines(data, (64, 64), None, "b.txt"))


_cfg_keys = st.sampled_from(
    ["filters", "size", "groups", "batch_normalize", "layers", "classes", "mask", "anchors",
     "channels", "weights_type"]
)  # fmt: skip
_cfg_sections = st.sampled_from(
    ["convolutional", "convolutional", "route", "shortcut", "yolo", "maxpool", "bogus"]
)


@FUZZ
@given(
    sections=st.lists(
        st.tuples(
            _cfg_sections,
            st.lists(
                st.tuples(_cfg_keys, st.one_of(st.integers(-1, 3).map(str), _numbers)), max_size=4
            ),
        ),
        max_size=8,
    ),
    noise=st.one_of(st.just(""), st.text(max_size=30)),
)
def test_cfg_text_gives_a_network_or_a_famous_error(sections, noise):
    # mostly after a [net] header, or the parser stops at the first line
    text = "[net]\n" + "".join(
        f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in opts) for name, opts in sections
    )

    def parse():
        return cfg_info(parse_cfg_text(text + noise, "m.cfg"), "m.cfg")

    info = _only_famous_errors(parse)
    if info is not None:
        assert info.n_classes >= 1 and info.n_params >= 0


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**18), 10**18),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["otsu", "refined", "dark", "light", "hull", "#ff0000", "../x", "a/b"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.sampled_from(
                ["name", "color", "extract", "mesh", "method", "polarity", "blur_nm",
                 "iterations", "fill_holes", "weights", "mesher", "shape", "class", "x"]
            ),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=12,
)  # fmt: skip


@FUZZ
@given(data=_values)
def test_any_table_gives_a_class_config_or_a_famous_error(data):
    config = _only_famous_errors(lambda: parse_config(data, "c.toml"))
    for spec in config or []:
        assert "/" not in spec.name and ".." not in spec.name
        for value in (spec.extract.blur_nm, spec.extract.threshold_offset):
            assert math.isfinite(value)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_toml_lines = st.lists(
    st.one_of(
        st.sampled_from(
            ["[[class]]", "[class]", "[class.extract]", "[class.mesh]", 'name = "a"',
             'name = "../b"', "blur_nm = 1e300", 'blur_nm = "50"', "iterations = -1",
             "class = -6", "mesh = [1]", 'method = "refined"', "fill_holes = 1"]
        ),
        st.text(max_size=20),
    ),
    max_size=8,
)  # fmt: skip


@FUZZ
@given(lines=_toml_lines, raw=st.binary(max_size=40))
def test_toml_files_load_or_give_a_famous_error(folder, lines, raw):
    path = folder / "c.toml"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + raw)
    _only_famous_errors(lambda: load_classes(path))


@FUZZ
@given(data=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode)))
def test_obj_names_load_or_give_a_famous_error(folder, data):
    path = folder / "obj.names"
    path.write_bytes(data)
    config = _only_famous_errors(lambda: load_classes(path))
    for spec in config or []:
        assert "/" not in spec.name and "\\" not in spec.name and ".." not in spec.name


@FUZZ
@given(
    text=st.one_of(
        st.text(alphabet="0123456789-:, x", max_size=25),
        st.text(max_size=15),
        st.lists(_numbers, max_size=4).map(":".join),
    ),
    n=st.integers(1, 500),
)
def test_slice_lists_give_indices_in_the_stack_or_a_famous_error(text, n):
    picks = _only_famous_errors(lambda: parse_slice_list(text, n))
    if picks is not None:
        assert picks and all(0 <= k < n for k in picks) and picks == sorted(set(picks))
