"""Progress reporting that composes across sub-steps.

Every long function takes ``progress(fraction, message)``. A caller that runs
several sub-steps hands each one ``sub(progress, start, stop)`` so that all of
them fill one bar. A callback may raise :class:`~famous_addon.core.errors.Cancelled`
to stop the work; the UI uses that for its cancel button.
"""

from __future__ import annotations

from collections.abc import Callable

from tqdm import tqdm

ProgressFn = Callable[[float, str], None]


def silent(fraction: float, message: str) -> None:
    """A progress callback that ignores everything."""


def sub(progress: ProgressFn | None, start: float, stop: float) -> ProgressFn:
    """Map a sub-step's 0..1 onto ``start..stop`` of the parent's bar.

    Parameters
    ----------
    progress : callable or None
        The parent's callback; ``None`` gives a silent callback.
    start, stop : float
        The part of the parent's range (0..1) this sub-step fills.

    Returns
    -------
    callable
        A callback taking the sub-step's own fraction.
    """
    if progress is None:
        return silent
    span = stop - start

    def child(fraction: float, message: str) -> None:
        progress(start + span * min(max(fraction, 0.0), 1.0), message)

    return child


class TqdmProgress:
    """A ``progress`` callback drawing a tqdm bar on the terminal (CLI)."""

    def __init__(self, desc: str = "FAMOUS", disable: bool = False):
        self._bar = tqdm(
            total=1000,
            desc=desc,
            disable=disable,
            bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
        )
        self._last = 0

    def __call__(self, fraction: float, message: str) -> None:
        target = int(round(min(max(fraction, 0.0), 1.0) * 1000))
        if target > self._last:
            self._bar.update(target - self._last)
            self._last = target
        self._bar.set_postfix_str(message, refresh=False)

    def close(self) -> None:
        self._bar.close()
