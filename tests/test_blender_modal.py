"""The path a click takes: invoke, a background job, timer events, progress, cancel, errors.

A background Blender runs no event loop and calls ``execute`` where a click
calls ``invoke``, so these tests drive the operators' own ``invoke`` and
``modal`` with TIMER and ESC events, as Blender's event loop would. Only
:meth:`~famous_addon.ui.jobs.ModalTimer.add_handler` and ``remove_handler``
(registering the timer and the modal handler with that loop) are left out.
"""

import time

import pytest
from blender_fixtures import panel_on_phantom

pytestmark = pytest.mark.blender


class Event:
    """What ``modal`` reads of Blender's event: its type."""

    def __init__(self, kind):
        self.type = kind


def probe(op_class):
    """The operator's own methods on a plain object whose reports are kept."""
    import bpy

    own = {
        k: v for k, v in vars(op_class).items() if not k.startswith(("bl_", "__")) and k != "poll"
    }
    bases = tuple(b for b in op_class.__bases__ if b is not bpy.types.Operator)

    def report(self, kind, message):
        self.reports.append((next(iter(kind)), message))

    cls = type(
        "Probe",
        bases,
        {
            **own,
            "add_handler": lambda self, context: None,
            "remove_handler": lambda self, context: None,
            "report": report,
        },
    )
    op = cls()
    op.reports = []
    return op


def drive(op, context, first=None, timeout=120.0):
    """Send ``first`` (if any), then TIMER events until ``modal`` stops; progress seen."""
    seen = []
    events = [first] if first is not None else []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        # as Blender's loop: an operator whose modal has finished gets no more events
        result = op.modal(context, Event(events.pop(0) if events else "TIMER"))
        seen.append((context.scene.famous.progress, context.scene.famous.status))
        if result not in ({"PASS_THROUGH"}, {"RUNNING_MODAL"}):
            return result, seen
        time.sleep(0.02)
    raise AssertionError("the job never ended")


def test_detection_from_a_click_shows_progress_and_finishes(addon, phantom_run, tmp_path):
    import json

    from famous_addon.ui.operators import FAMOUS_OT_run_detection

    s = panel_on_phantom(addon, phantom_run[0], tmp_path / "ui")
    op = probe(FAMOUS_OT_run_detection)
    assert op.invoke(addon.context, Event("LEFTMOUSE")) == {"RUNNING_MODAL"}
    assert s.running and s.status == "detection starting"
    assert not FAMOUS_OT_run_detection.poll(addon.context), "one job at a time"
    result, seen = drive(op, addon.context)
    assert result == {"FINISHED"} and not s.running and not op.reports
    assert s.status == f"run folder: {tmp_path / 'ui' / 'run'}"
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions), "progress only goes forward"
    assert len({m for _, m in seen}) >= 3, "the panel shows the stages as they go"
    run = json.loads((tmp_path / "ui" / "run" / "run.json").read_text())
    assert run["status"] == "complete"


@pytest.mark.parametrize("how", ["ESC", "panel"])
def test_cancel_stops_the_job_and_says_how_to_resume(addon, phantom_run, tmp_path, how):
    from famous_addon.ui.operators import FAMOUS_OT_run_detection

    s = panel_on_phantom(addon, phantom_run[0], tmp_path / "ui")
    op = probe(FAMOUS_OT_run_detection)
    assert op.invoke(addon.context, Event("LEFTMOUSE")) == {"RUNNING_MODAL"}
    if how == "panel":
        assert addon.ops.famous.cancel() == {"FINISHED"}  # the panel's Cancel button
    result, _ = drive(op, addon.context, first="ESC" if how == "ESC" else None)
    assert result == {"CANCELLED"} and not s.running
    assert s.status == "detection cancelled; Run detection again resumes it"
    assert op.reports == [("WARNING", "detection cancelled")]


def test_an_error_in_the_job_is_a_report_not_a_traceback(addon, phantom_run, tmp_path):
    from famous_addon.ui.operators import FAMOUS_OT_run_detection

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    s = panel_on_phantom(addon, phantom_run[0], tmp_path / "ui")
    s.stack = str(bad)
    op = probe(FAMOUS_OT_run_detection)
    assert op.invoke(addon.context, Event("LEFTMOUSE")) == {"RUNNING_MODAL"}
    result, _ = drive(op, addon.context)
    assert result == {"CANCELLED"} and not s.running and s.status == "detection failed"
    [(kind, message)] = op.reports
    assert kind == "ERROR" and "broken.tif" in message and "unexpected" not in message


def test_meshing_from_a_click_builds_on_timer_events_and_cancel_keeps_nothing(
    addon, phantom_run, tmp_path
):
    import shutil

    from famous_addon.ui.operators import FAMOUS_OT_build_meshes

    shutil.copytree(phantom_run[1], tmp_path / "ui" / "run")
    s = panel_on_phantom(addon, phantom_run[0], tmp_path / "ui")
    op = probe(FAMOUS_OT_build_meshes)
    assert op.invoke(addon.context, Event("LEFTMOUSE")) == {"RUNNING_MODAL"}
    op.modal(addon.context, Event("TIMER"))  # one organelle meshed
    result, _ = drive(op, addon.context, first="ESC")
    assert result == {"CANCELLED"} and s.status == "meshing cancelled; nothing was kept"
    assert "FAMOUS" not in addon.data.collections
    assert op.reports == [("WARNING", "meshing cancelled")]

    op = probe(FAMOUS_OT_build_meshes)
    assert op.invoke(addon.context, Event("LEFTMOUSE")) == {"RUNNING_MODAL"}
    result, seen = drive(op, addon.context)
    assert result == {"FINISHED"} and not s.running
    n = len(addon.data.collections["FAMOUS"].all_objects)
    assert n > 0 and s.status.startswith(f"{n} organelles meshed")
    assert any(m.startswith("meshed ") for _, m in seen)
