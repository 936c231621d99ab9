"""Work off Blender's main thread, with progress and cancel.

The thread only runs bpy-free code and writes its state into plain
attributes; the modal operator reads them from the main thread on a timer.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable

from ..core.errors import Cancelled, FamousError


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
            self.error, self.state = exc.message, "failed"
        except Exception as exc:  # shown in the UI; the traceback goes to the console
            traceback.print_exc()
            self.error, self.state = f"unexpected error: {exc}", "failed"
