"""The pipeline's outputs on the phantom are those of a pinned reference run.

The reference (``tests/golden/``) was written before the code was split into
its present modules (issue 25), so any change of behaviour in a refactor shows
here: ``labels.tif`` voxel for voxel and ``organelles.csv`` byte for byte, for
a run from the phantom's truth boxes and one from the bundled detector.

Rules added since then that change outputs are switched off here
(:data:`SINCE`), so the reference stays the pre-refactor run; each has tests
of its own. A deliberate change of behaviour rewrites the reference (the
detector's run was rewritten when the masks of two boxes side by side came
to be divided along the image, 2026-12-07)::

    .venv/bin/python tests/test_same_outputs.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from famous_addon.core.phantom.write import write_phantom
from famous_addon.core.pipeline import run_pipeline
from famous_addon.core.request import RunRequest, RunSettings

GOLDEN = Path(__file__).resolve().parent / "golden"
DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
SOURCES = ("boxes", "model")
# added after the reference was taken: the cut between organelles boxed together
SINCE = RunSettings(separation=0.0)


def _runs(tmp: Path) -> dict[str, Path]:
    """The phantom and one run folder per box source."""
    phantom = tmp / "phantom"
    write_phantom(phantom, shape=(32, 384, 384), seed=11, stl=False)
    runs = {"phantom": phantom}
    for source in SOURCES:
        where = {"boxes": phantom / "boxes"} if source == "boxes" else {"model": DEMO_MODEL}
        run = tmp / source
        run_pipeline(
            RunRequest(
                phantom / "stack.tif",
                phantom / "classes.toml",
                run,
                labels=True,
                settings=SINCE,
                **where,
            )
        )
        runs[source] = run
    return runs


def _stack_digest(phantom: Path) -> str:
    return hashlib.sha256(tifffile.imread(phantom / "stack.tif").tobytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _runs(tmp_path_factory.mktemp("same"))


def test_the_phantom_is_the_reference_one(runs):
    assert _stack_digest(runs["phantom"]) == (GOLDEN / "stack.sha256").read_text().strip()


@pytest.mark.parametrize("source", SOURCES)
def test_labels_and_organelle_table_are_the_reference_ones(runs, source):
    labels = tifffile.imread(runs[source] / "labels.tif")
    with np.load(GOLDEN / f"{source}_labels.npz") as z:
        expected = z["labels"]
    assert labels.shape == expected.shape
    differ = int(np.count_nonzero(labels != expected))
    assert differ == 0, f"{differ} voxels differ from the reference labels"
    table = (runs[source] / "organelles.csv").read_text()
    assert table == (GOLDEN / f"{source}_organelles.csv").read_text()


def main() -> None:
    """Rewrite the reference from the present code."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = _runs(Path(tmp))
        GOLDEN.mkdir(exist_ok=True)
        (GOLDEN / "stack.sha256").write_text(_stack_digest(runs["phantom"]) + "\n")
        for source in SOURCES:
            labels = tifffile.imread(runs[source] / "labels.tif")
            np.savez_compressed(GOLDEN / f"{source}_labels.npz", labels=labels)
            table = (runs[source] / "organelles.csv").read_text()
            (GOLDEN / f"{source}_organelles.csv").write_text(table)
    print(f"reference written to {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
