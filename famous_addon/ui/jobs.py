"""Long work from the panel: off Blender's main thread, with progress, cancel and reports.

:class:`BackgroundJob` runs bpy-free work in a thread and writes its state
into plain attributes; the modal operators (:class:`ModalTimer`,
:class:`BackgroundOperator`) read them from the main thread on a timer and
show them in the panel. Known errors become operator reports, never
tracebacks (:func:`report_errors`).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from ..core.errors import Cancelled, FamousError

TIMER_S = 0.1
# The core words its fixes for the command line; the panel names its own fields.
PANEL_WORDS = (
    ("choose another --out folder for this input", "tick Overwrite, or choose another Output"),
    ("add --resume to continue it", "Run detection again continues it"),
    ("run the pipeline again with --labels, or mesh with --mesher hull", "set Mesher to Hull"),
    ("a new or empty --out folder", "another Output folder"),
    ("another --out folder", "another Output folder"),
    ("--out folder", "Output folder"),
    ("add --overwrite", "tick Overwrite"),
)


def for_panel(message: str) -> str:
    """A core error message with the command line's option names put as the panel's."""
    for cli, panel in PANEL_WORDS:
        message = message.replace(cli, panel)
    return message


class BackgroundJob:
    """Run ``work(progress)`` in a thread; ``progress`` raises Cancelled once cancelled.

    Attributes
    ----------
    fraction, message : float, str
        The latest progress.
    state : str
        ``running``, ``done``, ``cancelled`` or ``failed``.
    result, error : object, str
        The work's return value, or the message of what went wrong.
    """

    def __init__(self, work: Callable):
        self._work = work
        self._cancel = threading.Event()
        self.fraction, self.message = 0.0, "starting"
        self.state, self.result, self.error = "running", None, ""
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def progress(self, fraction: float, message: str) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        self.fraction, self.message = fraction, message

    def _main(self) -> None:
        try:
            self.result = self._work(self.progress)
            self.state = "done"
        except Cancelled:
            self.state = "cancelled"
        except FamousError as exc:
            self.error, self.state = for_panel(exc.message), "failed"
        except Exception as exc:  # shown in the UI; the traceback goes to the console
            traceback.print_exc()
            self.error, self.state = f"unexpected error: {exc}", "failed"


def report_exception(op, exc: BaseException) -> None:
    """Show an error as an operator report (the console keeps a bug's traceback).

    Parameters
    ----------
    op : Operator
        The operator whose ``report`` shows the message.
    exc : Exception
        A FamousError (its message), a Cancelled (a warning) or a bug.
    """
    if isinstance(exc, FamousError):
        op.report({"ERROR"}, for_panel(exc.message))
    elif isinstance(exc, Cancelled):
        op.report({"WARNING"}, "cancelled")
    else:
        traceback.print_exception(exc)
        op.report({"ERROR"}, f"unexpected error: {exc}")


def report_errors(op, fn: Callable):
    """Run ``fn()``; turn its errors into reports of ``op``.

    Returns
    -------
    object
        ``fn``'s result, or None when it raised.
    """
    try:
        return fn()
    except Exception as exc:
        report_exception(op, exc)
        return None


def redraw_view3d(context) -> None:
    """Redraw the 3D views, where the panel shows the progress."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


class ModalTimer:
    """Timer and status bookkeeping shared by the modal operators.

    The job's state lives in ``Scene.famous`` (``running``, ``progress``,
    ``status``, ``cancel``): the panel draws it, the Cancel button sets
    ``cancel``.
    """

    _timer = None

    def start_modal(self, context, status: str) -> None:
        """Mark the job running and start the timer that drives ``modal``."""
        settings = context.scene.famous
        settings.running, settings.progress, settings.status = True, 0.0, status
        settings.cancel = False
        self.add_handler(context)

    def stop_modal(self, context, status: str) -> None:
        """Stop the timer and leave ``status`` in the panel."""
        self.remove_handler(context)
        settings = context.scene.famous
        settings.running, settings.status = False, status
        redraw_view3d(context)

    def add_handler(self, context) -> None:
        """Blender's side: a timer event every TIMER_S and this operator's ``modal`` for it.

        Apart from these two methods, the modal path is plain Python: a test
        drives it with its own TIMER and ESC events, since a background
        Blender runs no event loop (and calls ``execute`` for ``invoke``).
        """
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_S, window=context.window)
        wm.modal_handler_add(self)

    def remove_handler(self, context) -> None:
        context.window_manager.event_timer_remove(self._timer)

    @staticmethod
    def cancel_requested(context, event) -> bool:
        """ESC pressed, or the panel's Cancel button."""
        return event.type == "ESC" or context.scene.famous.cancel


class BackgroundOperator(ModalTimer):
    """An operator whose work runs in a thread (``invoke``) or to the end (``execute``).

    Subclasses give ``work_for(context)``, which checks the settings and
    returns ``work(progress)``, and ``done(context, result)``, which shows the
    result and returns the status line; ``starting``, ``noun`` and
    ``cancel_hint`` word the status lines.
    """

    starting = "starting"
    noun = "work"
    cancel_hint = ""

    @classmethod
    def poll(cls, context):
        return not context.scene.famous.running

    def execute(self, context):
        result = report_errors(self, lambda: self.work_for(context)(None))
        if result is None:
            return {"CANCELLED"}
        context.scene.famous.status = self.done(context, result)
        return {"FINISHED"}

    def invoke(self, context, event):
        work = report_errors(self, lambda: self.work_for(context))
        if work is None:
            return {"CANCELLED"}
        self._job = BackgroundJob(work).start()
        self.start_modal(context, self.starting)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job, settings = self._job, context.scene.famous
        if self.cancel_requested(context, event):
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        settings.progress, settings.status = job.fraction, job.message
        redraw_view3d(context)
        if job.state == "running":
            return {"PASS_THROUGH"}
        if job.state == "done":
            self.stop_modal(context, self.done(context, job.result))
            return {"FINISHED"}
        if job.state == "cancelled":
            self.stop_modal(context, f"{self.noun} cancelled{self.cancel_hint}")
            self.report({"WARNING"}, f"{self.noun} cancelled")
        else:
            self.stop_modal(context, f"{self.noun} failed")
            self.report({"ERROR"}, job.error)
        return {"CANCELLED"}
