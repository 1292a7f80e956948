"""prefetch.Ahead: work run ahead in a thread hands back its value, its exception or a timeout."""

from __future__ import annotations

import threading

import pytest

from awares_rl.prefetch import Ahead


def test_ahead_returns_the_value_and_overlaps_the_caller():
    started, go = threading.Event(), threading.Event()

    def work():
        started.set()
        assert go.wait(10)  # runs while the caller does something else
        return [1, 2]

    ahead = Ahead(work, "step 2's rollouts")
    assert started.wait(10) and not ahead.done()
    go.set()
    assert ahead.result(timeout_s=10) == [1, 2] and ahead.done()


def test_ahead_reraises_in_the_caller_and_names_what_it_waited_for():
    def broken():
        raise ValueError("worker 1 lost")

    with pytest.raises(ValueError, match="worker 1 lost"):
        Ahead(broken, "step 3's rollouts").result(timeout_s=10)
    stop = threading.Event()
    slow = Ahead(lambda: stop.wait(30), "step 4's rollouts")
    with pytest.raises(TimeoutError, match=r"step 4's rollouts: not back within 0.2 s .*rollout.step_timeout_s"):
        slow.result(timeout_s=0.2)
    stop.set()
    assert slow.result(timeout_s=10) is True
