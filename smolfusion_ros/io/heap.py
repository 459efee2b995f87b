"""Give freed heap memory back to the operating system after very large messages.

A 10000x10000 image handed to `analyze` is 300 MB in the request, more again while rclpy and
the converter hold copies; once it is gone, glibc keeps much of the freed memory in its
arenas (and raises its mmap threshold after freeing a large block, so the next big buffers come
from the heap too): fusion_node's RSS stayed hundreds of MB above its baseline. malloc_trim(0)
returns free arena pages. Only glibc has it; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import platform
import threading
import time

# Messages at least this large are followed by a trim (a 1080p rgb8 frame is 6 MB).
LARGE_MESSAGE_BYTES = 32 * 1024 * 1024
# malloc_trim walks the heap (milliseconds); a camera sending huge frames fast gets one trim
# per this period, not one per frame.
MIN_TRIM_INTERVAL_S = 1.0

_lock = threading.Lock()
_last_trim = 0.0
_deferred: threading.Timer | None = None
_malloc_trim = None


def _load():
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if platform.libc_ver()[0] == "glibc":
            try:
                function = ctypes.CDLL("libc.so.6").malloc_trim
                function.argtypes = [ctypes.c_size_t]
                function.restype = ctypes.c_int
                _malloc_trim = function
            except (OSError, AttributeError):
                pass
    return _malloc_trim


def available() -> bool:
    return bool(_load())


def trim(force: bool = False) -> bool:
    """malloc_trim(0); True when memory was given back.

    Rate-limited unless `force`: a trim skipped for that runs a little later instead, so the
    memory of the last of many large messages is given back too.
    """
    global _last_trim, _deferred
    function = _load()
    if not function:
        return False
    with _lock:
        now = time.monotonic()
        wait = MIN_TRIM_INTERVAL_S - (now - _last_trim)
        if not force and wait > 0:
            if _deferred is None:
                _deferred = threading.Timer(wait, _run_deferred)
                _deferred.daemon = True
                _deferred.start()
            return False
        _last_trim = now
        return bool(function(0))


def _run_deferred() -> None:
    global _deferred
    with _lock:
        _deferred = None
    trim(force=True)


def after_message(nbytes: int) -> bool:
    """Trim after a message of `nbytes` once the caller has let go of it; small ones: nothing."""
    return nbytes >= LARGE_MESSAGE_BYTES and trim()
