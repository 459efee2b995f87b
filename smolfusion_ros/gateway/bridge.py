"""ROS futures -> asyncio futures, and a uvicorn server on its own thread and event loop.

rclpy completes its futures on executor threads; the gateway's handlers run on uvicorn's
event loop in another thread. Nothing here blocks either side: a ROS future's done-callback
hands its result to the loop with loop.call_soon_threadsafe, and the handler awaits an
asyncio future. Import-light on purpose (no rclpy): the bridge works with any object that has
add_done_callback / result / exception, like rclpy.task.Future.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from typing import Any

import uvicorn


def _copy_outcome(ros_future: Any, target: asyncio.Future) -> None:
    if target.done():  # the awaiting handler gave up (timeout, client gone)
        return
    try:
        exc = ros_future.exception()
    except Exception as error:  # a cancelled rclpy future raises here
        target.set_exception(error)
        return
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(ros_future.result())


def run_done_callbacks_inline(ros_future: Any) -> None:
    """Have `ros_future` run its done callbacks where its result is set.

    An executor that completes an rclpy Future first attaches itself to it
    (Future._set_executor), and the Future then schedules each done callback as a new
    executor task: one more wake-up of the executor and one more hand-over between its
    threads per call, about a millisecond on a busy 2-core machine, for a callback that only
    calls loop.call_soon_threadsafe. Without an executor attached, rclpy (Humble to Kilted)
    calls the callbacks at once. Where a future rclpy has no _set_executor this does nothing
    and the callbacks are scheduled as before.
    """
    if hasattr(ros_future, "_set_executor"):
        ros_future._set_executor = lambda _executor: None


async def await_ros_future(ros_future: Any, timeout: float | None = None) -> Any:
    """Await an rclpy Future from the event loop; asyncio.TimeoutError after `timeout` s."""
    loop = asyncio.get_running_loop()
    target = loop.create_future()

    def done(fut: Any) -> None:
        # RuntimeError: the loop closed while the call was in flight (shutdown)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_copy_outcome, fut, target)

    run_done_callbacks_inline(ros_future)
    ros_future.add_done_callback(done)
    return await asyncio.wait_for(target, timeout)


def threadsafe_put(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, item: Any) -> None:
    """Put `item` into an asyncio.Queue from any thread (e.g. an action feedback callback)."""
    with contextlib.suppress(RuntimeError):  # loop closed
        loop.call_soon_threadsafe(queue.put_nowait, item)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (read it back from getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only
    # when the socket's proto says TCP, and a plain socket(family, SOCK_STREAM) says 0. With
    # Nagle on, a response's second write (the body after the headers, each SSE event after
    # the first) waited for the client's delayed ACK: 40 ms per request on a kept-alive
    # connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class ServerThread:
    """uvicorn serving `app` on an already bound socket, on its own thread and event loop."""

    def __init__(self, app: Any, sock: socket.socket, log_level: str = "warning") -> None:
        config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        # uvicorn would replace the process's SIGINT handler; the node runner owns signals.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._sock = sock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway-http", daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by the node
            self.error = exc
        finally:
            self.started.set()
            self.loop.close()

    async def _serve(self) -> None:
        config = self.server.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        await self.server.startup(sockets=[self._sock])
        self.started.set()
        if self.server.should_exit:
            return
        await self.server.main_loop()
        await self.server.shutdown(sockets=[self._sock])

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        self.started.wait(timeout)
        if self.error is not None:
            raise RuntimeError(f"the HTTP server did not start: {self.error}")

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
