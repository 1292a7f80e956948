"""Work run ahead in a driver thread: ``grpo.async_rollout`` collects step t+1's episodes here
while the learner trains step t (one-step off-policy, verl's ``one_step_off``).

    ahead = Ahead(lambda: collect(step + 1), "step 2's rollouts")
    ...                                   # the learner trains meanwhile
    batch = ahead.result(timeout_s=600)   # its value, its exception, or a TimeoutError naming it

The thread is a daemon: a run that fails in the main thread does not wait for it at exit. Only
Ray calls run in it (rollout and reward actors), never the learner, so the two stages overlap on
the cluster while the driver holds no model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Ahead:
    """``fn()`` started now in a daemon thread; ``result`` waits for it (bounded)."""

    def __init__(self, fn: Callable[[], Any], what: str) -> None:
        self.what = what
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name=f"ahead: {what}", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self._value = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by result()
            self._error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout_s: float) -> Any:
        """``fn``'s value; its exception, re-raised here; TimeoutError naming ``what`` after ``timeout_s``."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"{self.what}: not back within {timeout_s:g} s (run ahead of the learner by "
                               "grpo.async_rollout); raise rollout.step_timeout_s or see the Ray worker logs")
        if self._error is not None:
            raise self._error
        return self._value
