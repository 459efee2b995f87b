"""core/worker.py: the bounded queue's full policies and the worker thread's life, without ROS."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import wait_for

from smolfusion_ros.core.worker import BoundedQueue, FullPolicy, QueueFull, WorkerThread


def test_reject_policy_refuses_the_newest_with_a_clear_error_and_counts_it():
    queue = BoundedQueue("visual questions", 2, FullPolicy.REJECT)
    assert queue.put("a") is None and queue.put("b") is None
    with pytest.raises(QueueFull, match="busy: 2 visual questions are already waiting"):
        queue.put("c")
    assert list(queue) == ["a", "b"]
    assert (queue.counts.accepted, queue.counts.rejected, queue.counts.dropped) == (2, 1, 0)


def test_drop_oldest_policy_makes_room_and_returns_what_it_dropped():
    queue = BoundedQueue("sentences", 2, FullPolicy.DROP_OLDEST)
    queue.put(1)
    queue.put(2)
    assert queue.put(3) == 1
    assert [queue.pop(), queue.pop(), queue.pop()] == [2, 3, None]
    assert queue.counts.dropped == 1 and queue.counts.accepted == 3


def test_queue_capacity_must_be_positive():
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        BoundedQueue("finals", 0)


def _queue_worker(process, **kwargs):
    queue: BoundedQueue = BoundedQueue("jobs", 100)
    worker = WorkerThread("test-worker", take=queue.pop, process=process, **kwargs)
    return queue, worker


def _put(worker: WorkerThread, queue: BoundedQueue, item) -> None:
    with worker.cond:
        queue.put(item)
    worker.wake()


def test_items_are_processed_in_order_and_a_failing_one_does_not_stop_the_thread():
    done, errors = [], []

    def process(item):
        if item == "bad":
            raise RuntimeError("boom")
        done.append(item)

    queue, worker = _queue_worker(process, on_error=lambda item, exc: errors.append((item, exc)))
    worker.start()
    for item in ("a", "bad", "b"):
        _put(worker, queue, item)
    assert wait_for(lambda: done == ["a", "b"], 10)
    assert [(item, str(exc)) for item, exc in errors] == [("bad", "boom")]
    assert worker.stop(5.0)
    assert not worker.running


def test_wait_s_lets_a_sleeping_worker_look_again_without_a_wake():
    due = threading.Event()
    taken = []

    def take():
        if due.is_set() and not taken:
            taken.append(time.monotonic())
            return "timer"
        return None

    worker = WorkerThread("timer", take=take, process=lambda _item: None, wait_s=lambda: 0.05)
    worker.start()
    due.set()  # no wake(): only the timed wait can notice it
    assert wait_for(lambda: taken, 10)
    worker.stop()


def test_stop_sets_preempt_and_hands_cleanup_to_a_thread_still_inside_a_call():
    inside, release = threading.Event(), threading.Event()
    cleaned = []

    def process(_item):
        inside.set()
        release.wait(10)

    queue, worker = _queue_worker(process)
    worker.start()
    _put(worker, queue, "long")
    assert inside.wait(10)
    # The running call has not returned: the cleanup must wait for it, not run under it.
    assert worker.stop(0.05, then=lambda: cleaned.append(release.is_set())) is False
    assert worker.preempt.is_set()
    assert cleaned == []
    release.set()
    assert wait_for(lambda: cleaned == [True], 10)
    assert wait_for(lambda: not worker.running, 10)


def test_stop_runs_cleanup_at_once_when_the_thread_has_exited():
    queue, worker = _queue_worker(lambda _item: None)
    worker.start()
    cleaned = []
    assert worker.stop(5.0, then=lambda: cleaned.append(1)) is True
    assert cleaned == [1]


def test_a_stopped_worker_starts_again_and_a_failed_setup_ends_the_thread():
    seen = []
    queue, worker = _queue_worker(seen.append)
    worker.start()
    worker.stop()
    worker.start()  # deactivate, then activate again
    assert not worker.preempt.is_set()
    _put(worker, queue, "again")
    assert wait_for(lambda: seen == ["again"], 10)
    worker.stop()

    failed = WorkerThread("no-model", take=lambda: None, process=seen.append, setup=lambda: False)
    failed.start()
    assert wait_for(lambda: not failed.running, 10)
    assert failed.stop(1.0)


def test_nothing_is_taken_after_stop():
    queue, worker = _queue_worker(lambda _item: time.sleep(0.01))
    worker.start()
    worker.stop()
    _put(worker, queue, "late")
    time.sleep(0.1)
    assert list(queue) == ["late"]


def test_request_stop_takes_nothing_more_so_the_owner_can_fail_the_queue_before_the_join():
    inside, release = threading.Event(), threading.Event()
    done = []

    def process(item):
        inside.set()
        release.wait(10)
        done.append(item)

    queue, worker = _queue_worker(process)
    worker.start()
    _put(worker, queue, "running")
    _put(worker, queue, "queued")
    assert inside.wait(10)
    worker.request_stop()
    assert worker.stopping and worker.preempt.is_set() and worker.current == "running"
    release.set()  # the running item returns; the queued one must not be taken now
    assert wait_for(lambda: not worker.running, 10)
    with worker.cond:
        assert queue.drain() == ["queued"]
    assert done == ["running"]
    assert worker.stop(5.0)
