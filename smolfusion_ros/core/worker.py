"""The one worker pattern of core/: a bounded queue with a full policy, and one thread that
takes work under a shared lock and does it outside it.

The chat engine, the vision worker, the transcriber and the speech output each schedule
differently (by submission order with background work in the gaps, questions before the scene
loop, finals before speculations before previews, sentences in order), so the scheduling
decision stays theirs: `take` is called with the lock held and returns the next item or None.
What they share lives here, written once: the thread's start/stop/join, waking it, waiting
with a timeout, one failing item never killing the thread, a preemption event set on stop,
and freeing a resource (a model) only after the thread has left it.

`BoundedQueue` is not locked on its own: it is guarded by the worker's `cond`, like the rest
of the state `take` reads, so a decision over several queues is atomic.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueueFull(Exception):
    """A queue with the reject policy is full; the message says which and how deep."""


class FullPolicy(str, Enum):
    REJECT = "reject"  # the newest item is refused (QueueFull): its caller can retry
    DROP_OLDEST = "drop_oldest"  # the oldest item makes room: the newest matters most


@dataclass
class QueueCounts:
    accepted: int = 0
    rejected: int = 0  # refused because the queue was full (reject policy)
    dropped: int = 0  # pushed out by a newer item (drop-oldest policy)


class BoundedQueue(Generic[T]):
    """A FIFO of at most `capacity` items; what happens when it is full is its `policy`.

    Guard every call with the owning worker's `cond`.
    """

    def __init__(self, what: str, capacity: int, policy: FullPolicy = FullPolicy.REJECT) -> None:
        if capacity < 1:
            raise ValueError(f"{what}: capacity must be >= 1, got {capacity}")
        self.what = what  # plural noun for messages: "visual questions", "sentences"
        self.capacity = int(capacity)
        self.policy = FullPolicy(policy)
        self.counts = QueueCounts()
        self._items: deque[T] = deque()

    def put(self, item: T) -> T | None:
        """Append `item`. Returns the item dropped to make room (drop-oldest), else None;
        raises QueueFull (reject)."""
        dropped = None
        if len(self._items) >= self.capacity:
            if self.policy is FullPolicy.REJECT:
                self.counts.rejected += 1
                raise QueueFull(
                    f"busy: {self.capacity} {self.what} are already waiting; try again shortly"
                )
            dropped = self._items.popleft()
            self.counts.dropped += 1
        self._items.append(item)
        self.counts.accepted += 1
        return dropped

    def pop(self) -> T | None:
        return self._items.popleft() if self._items else None

    def peek(self) -> T | None:
        return self._items[0] if self._items else None

    def remove(self, item: T) -> bool:
        try:
            self._items.remove(item)
        except ValueError:
            return False
        return True

    def drain(self) -> list[T]:
        """Remove and return everything queued (to fail it on stop or on a reset)."""
        items = list(self._items)
        self._items.clear()
        return items

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))


class WorkerThread(Generic[T]):
    """One daemon thread: `setup()` once, then `take()` (under `cond`) and `process(item)`
    until stopped. With nothing to take it sleeps until `wake()` or `wait_s()` seconds.

    A failing `process` is reported to `on_error(item, exc)` and the loop goes on.
    `stop(timeout, then=...)` sets `stopping` and `preempt`, wakes the thread and joins it;
    `then` (e.g. freeing the model) runs once the thread has left `process`: at once when the
    join succeeded, else on the worker thread as it exits, never under a running call.
    A stopped worker can be started again (a lifecycle node's deactivate/activate).
    """

    def __init__(
        self,
        name: str,
        *,
        take: Callable[[], T | None],
        process: Callable[[T], None],
        wait_s: Callable[[], float | None] = lambda: None,
        setup: Callable[[], bool] | None = None,
        on_error: Callable[[T, Exception], None] | None = None,
        cond: threading.Condition | None = None,
        preempt: threading.Event | None = None,
    ) -> None:
        self.name = name
        self.cond = cond or threading.Condition()
        # Set on stop (and by the owner when more urgent work arrives): a running item that
        # can stop early checks it or hands it to its back end as the cancel event.
        self.preempt = preempt if preempt is not None else threading.Event()
        self._take = take
        self._process = process
        self._wait_s = wait_s
        self._setup = setup or (lambda: True)
        self._on_error = on_error or self._log_error
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._current: T | None = None
        # Guards _exited/_on_exit so that a cleanup handed over by stop() runs exactly once.
        self._exit_lock = threading.Lock()
        self._exited = True
        self._on_exit: list[Callable[[], None]] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        with self.cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self.preempt.clear()
            with self._exit_lock:
                self._exited = False
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """The first half of stop(), without the join: nothing is taken any more and
        `preempt` is set. Lets the owner fail what is still queued, and cancel `current`,
        knowing the thread takes nothing new meanwhile; then stop() joins."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        self.preempt.set()

    def stop(self, timeout: float = 5.0, then: Callable[[], None] | None = None) -> bool:
        """Stop the thread; True when it has exited within `timeout`. `then` runs once it
        has left the item it was processing (see the class doc)."""
        self.request_stop()
        with self.cond:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._exit_lock:
            alive = thread is not None and not self._exited
            if alive and then is not None:
                self._on_exit.append(then)
                log.warning("%s: still inside a call; cleanup runs once it returns", self.name)
                return False
        if then is not None:
            then()
        return not alive

    def wake(self) -> None:
        """New work may be takeable: let the thread look again."""
        with self.cond:
            self.cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def current(self) -> T | None:
        """The item being processed, or None."""
        return self._current

    # ------------------------------------------------------------------- thread
    def _run(self) -> None:
        try:
            if not self._setup():
                return
            while True:
                with self.cond:
                    item = None if self._stopping else self._take()
                    while item is None and not self._stopping:
                        self.cond.wait(self._wait_s())
                        item = None if self._stopping else self._take()
                    if self._stopping:
                        return
                    self._current = item
                try:
                    self._process(item)
                except Exception as exc:  # one failing item never stops the worker
                    try:
                        self._on_error(item, exc)
                    except Exception:
                        log.exception("%s: error handler failed", self.name)
                finally:
                    with self.cond:
                        self._current = None
        except Exception:
            log.exception("%s: worker thread failed", self.name)
        finally:
            with self._exit_lock:
                self._exited = True
                on_exit, self._on_exit = self._on_exit, []
            for callback in on_exit:
                try:
                    callback()
                except Exception:
                    log.exception("%s: cleanup after exit failed", self.name)

    def _log_error(self, item: T, exc: Exception) -> None:
        log.error("%s: %s failed: %s: %s", self.name, type(item).__name__, type(exc).__name__, exc)
