"""SmolFusionClient: a small blocking facade over the fusion node's services and actions.

For scripts, behaviour-tree leaves and tests (in the spirit of nav2_simple_commander):

    client = SmolFusionClient()            # own node + background executor
    client.wait_until_ready(30)
    print(client.chat("Hello!", max_tokens=64).reply)
    handle = client.converse("Tell me a story", on_feedback=lambda fb: print(fb.delta))
    handle.cancel(); print(handle.result().cancelled)
    client.close()

Never call its blocking methods from inside a callback of the executor that spins it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.srv import GetState
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from smolfusion_ros.action import Converse
from smolfusion_ros.srv import Chat

# The fusion node's name (its lifecycle services are <namespace>/fusion_node/get_state ...).
FUSION_NODE = "fusion_node"
# The component name of fusion_node's /diagnostics status (nodes/fusion_node.py).
LANGUAGE_MODEL_STATUS = "language model"

# The client's own response queue: rclpy's default keeps the last 10, so a client with many
# calls in flight (a burst from one behaviour tree) could lose answers on its side too.
CLIENT_QOS = QoSProfile(depth=256, reliability=ReliabilityPolicy.RELIABLE)


class _ActionClient(ActionClient):
    """rclpy's ActionClient adds itself to the node before it creates its lock, so an executor
    already spinning that node (a behaviour tree's, a test's) could touch the missing lock and
    its spin thread died with AttributeError (seen in CI). The lock exists before that here."""

    def __init__(self, *args, **kwargs) -> None:
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)


class ClientError(RuntimeError):
    """The fusion node could not be reached or did not answer in time."""


def _wait_future(future, timeout: float, what: str):
    """Block the calling (non-executor) thread until `future` is done.

    future.done() is polled as well: a done-callback added after the result arrived is run as
    an executor task, which may wait until some unrelated event wakes the executor.
    """
    done = threading.Event()
    future.add_done_callback(lambda _f: done.set())
    deadline = time.monotonic() + timeout
    while not future.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ClientError(f"{what}: no answer within {timeout} s")
        done.wait(min(remaining, 0.002))
    return future.result()


def _call_until_answered(client, request, deadline: float, what: str):
    """Call a service until one reply arrives or `deadline` (time.monotonic()) passes.

    Each try is bounded to 2 s: rmw_fastrtps drops a reply sent before the server has matched
    this client's reply reader (it waits 100 ms: "client will not receive response"), so on a
    loaded machine right after discovery a first request could otherwise wait out the whole
    timeout (seen in CI). Raises ClientError at the deadline.
    """
    while True:
        remaining = deadline - time.monotonic()
        try:
            return _wait_future(client.call_async(request), min(2.0, max(remaining, 0.1)), what)
        except ClientError:
            if time.monotonic() >= deadline:
                raise


def _full_name(node: Node, name: str) -> str:
    """`name` (relative to `node`'s namespace unless it starts with /) as a full name."""
    if name.startswith("/"):
        return name
    namespace = node.get_namespace().rstrip("/")
    return f"{namespace}/{name}"


class ConverseHandle:
    """A running converse goal: stream feedback, cancel it, wait for its result."""

    def __init__(self, client: SmolFusionClient, goal_handle, result_future) -> None:
        self._client = client
        self.goal_handle = goal_handle
        self._result_future = result_future
        self.first_feedback_at: float | None = None

    def cancel(self, timeout: float = 5.0) -> None:
        _wait_future(self.goal_handle.cancel_goal_async(), timeout, "cancel")

    def result(self, timeout: float = 120.0, cancel_on_timeout: bool = True) -> Converse.Result:
        """Wait for the result; on timeout (ClientError) the goal is cancelled first, so an
        answer nobody waits for any more does not keep the model busy."""
        try:
            return _wait_future(self._result_future, timeout, "converse result").result
        except ClientError:
            if cancel_on_timeout and not self.done():
                with contextlib.suppress(ClientError):
                    self.cancel(timeout=2.0)
            raise

    def done(self) -> bool:
        return self._result_future.done()


class SmolFusionClient:
    def __init__(self, node: Node | None = None, namespace: str = "") -> None:
        self._owns_node = node is None
        self._owns_context = False
        if node is None:
            if not rclpy.ok():
                rclpy.init()
                self._owns_context = True
            node = rclpy.create_node("smolfusion_client", namespace=namespace or None)
            self._executor = MultiThreadedExecutor(num_threads=4)
            self._executor.add_node(node)
            self._spin_thread = threading.Thread(target=self._executor.spin, daemon=True)
            self._spin_thread.start()
        self.node = node
        prefix = f"{namespace.rstrip('/')}/" if namespace else ""
        self._chat = node.create_client(Chat, f"{prefix}chat", qos_profile=CLIENT_QOS)
        # Readiness (wait_until_ready): fusion_node's lifecycle state and its model's state.
        self._fusion_name = _full_name(node, prefix + FUSION_NODE)
        self._get_state = None
        self._diagnostics = None
        self._model_state = ""
        self._model_detail = ""
        self._vision_state = ""
        self._converse = _ActionClient(
            node,
            Converse,
            f"{prefix}converse",
            goal_service_qos_profile=CLIENT_QOS,
            result_service_qos_profile=CLIENT_QOS,
            cancel_service_qos_profile=CLIENT_QOS,
        )

    def wait_for_servers(self, timeout: float = 30.0) -> None:
        """Wait until the chat service and the converse action are up and replies arrive."""
        deadline = time.monotonic() + timeout
        if not self._chat.wait_for_service(timeout_sec=timeout):
            raise ClientError(f"chat service not available after {timeout} s")
        if not self._converse.wait_for_server(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise ClientError(f"converse action not available after {timeout} s")
        self._confirm_replies_arrive(deadline)

    def _confirm_replies_arrive(self, deadline: float) -> None:
        """Ask until one answer comes back (see _call_until_answered): the service is
        "available" once this client has matched the server, which may not have matched this
        client yet. An empty request is refused without touching the model, so it is a free
        probe; once one reply has arrived, the path stays matched."""
        try:
            _call_until_answered(self._chat, Chat.Request(text=""), deadline, "chat")
        except ClientError:
            raise ClientError("chat service: no reply reaches this client") from None

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Wait until the fusion node is active and its model has loaded.

        Readiness is fusion_node's lifecycle state (the standard ~/get_state service) plus
        its models' state on /diagnostics (language model "ready", vision model not
        "loading"; published as soon as the language model's load ends, else every
        diagnostics_period_s). Nothing is generated and nothing is written to memory. The
        chat service and the converse action are waited for too, with replies confirmed
        (wait_for_servers).
        """
        deadline = time.monotonic() + timeout
        self._watch_model_state()
        self.wait_for_servers(timeout)
        if not self._get_state.wait_for_service(timeout_sec=max(0.0, deadline - time.monotonic())):
            raise ClientError(f"{self._fusion_name}/get_state not available after {timeout} s")
        last = ""
        while True:
            try:
                state = _call_until_answered(
                    self._get_state, GetState.Request(), deadline, "get_state"
                ).current_state.label
            except ClientError:
                state = "no reply"
            last = f"lifecycle state {state}, model {self._model_state or 'unknown'}"
            if self._model_detail:
                last += f" ({self._model_detail})"
            if self._vision_state == "loading":
                last += ", vision model loading"
            # The vision model too, when there is one (a failed one leaves chat working).
            if (
                state == "active"
                and self._model_state == "ready"
                and self._vision_state != "loading"
            ):
                return
            if time.monotonic() >= deadline:
                raise ClientError(f"fusion node not ready after {timeout} s: {last}")
            time.sleep(0.05)

    def lifecycle_state(self, timeout: float = 5.0) -> str:
        """fusion_node's lifecycle state label (unconfigured, inactive, active, ...)."""
        self._watch_model_state()
        if not self._get_state.wait_for_service(timeout_sec=timeout):
            raise ClientError(f"{self._fusion_name}/get_state not available after {timeout} s")
        deadline = time.monotonic() + timeout
        response = _call_until_answered(self._get_state, GetState.Request(), deadline, "state")
        return response.current_state.label

    def _watch_model_state(self) -> None:
        """Create (once) the get_state client and the /diagnostics subscription."""
        if self._get_state is not None:
            return
        self._get_state = self.node.create_client(GetState, f"{self._fusion_name}/get_state")
        self._diagnostics = self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics, 50
        )

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        name = f"{self._fusion_name}: {LANGUAGE_MODEL_STATUS}"
        for status in msg.status:
            if status.name == name:
                values = {kv.key: kv.value for kv in status.values}
                self._model_state = values.get("state", "")
                self._model_detail = values.get("detail", "")
                self._vision_state = values.get("vision_state", "")

    def chat(
        self,
        text: str,
        *,
        session_id: str = "",
        persona: str = "",
        use_vision: str = "",
        max_tokens: int = 128,
        timeout: float = 120.0,
        timeout_s: float | None = None,
    ) -> Chat.Response:
        """Ask and wait up to `timeout` s (ClientError after that).

        The node is told the same deadline (Chat.timeout_s, unless `timeout_s` is given), so
        an answer this client gave up on stops there instead of holding the model.
        """
        request = Chat.Request(
            session_id=session_id,
            text=text,
            persona=persona,
            use_vision=use_vision,
            max_tokens=max_tokens,
            timeout_s=float(timeout if timeout_s is None else timeout_s),
        )
        return _wait_future(self._chat.call_async(request), timeout, "chat")

    def converse(
        self,
        text: str,
        *,
        session_id: str = "",
        persona: str = "",
        use_vision: str = "",
        max_tokens: int = 128,
        on_feedback: Callable[[Converse.Feedback], None] | None = None,
        timeout: float = 30.0,
        timeout_s: float = 0.0,
    ) -> ConverseHandle:
        """Send a goal (waiting up to `timeout` s for it to be accepted) and return its handle.

        `timeout_s` > 0 is the answer's deadline at the node (0 = chat.request_timeout_s);
        a behaviour-tree leaf with its own timeout should cancel() the handle when it gives up.
        """
        goal = Converse.Goal(
            session_id=session_id,
            text=text,
            persona=persona,
            use_vision=use_vision,
            max_tokens=max_tokens,
            timeout_s=float(timeout_s),
        )
        holder: dict[str, ConverseHandle] = {}

        def feedback(msg) -> None:
            handle = holder.get("handle")
            if handle is not None and handle.first_feedback_at is None:
                handle.first_feedback_at = time.monotonic()
            if on_feedback is not None:
                on_feedback(msg.feedback)

        goal_handle = _wait_future(
            self._converse.send_goal_async(goal, feedback_callback=feedback), timeout, "goal"
        )
        if not goal_handle.accepted:
            raise ClientError("converse goal rejected")
        handle = ConverseHandle(self, goal_handle, goal_handle.get_result_async())
        holder["handle"] = handle
        return handle

    def close(self) -> None:
        if self._owns_node:
            # The spin thread first: an action client destroyed while the executor builds
            # its wait set kills that thread with RCLError ("action client pointer is
            # invalid"), seen at the end of a benchmark run.
            self._executor.shutdown()
            self._spin_thread.join(timeout=5)
        self._converse.destroy()
        self.node.destroy_client(self._chat)
        if self._get_state is not None:
            self.node.destroy_client(self._get_state)
            self.node.destroy_subscription(self._diagnostics)
        if self._owns_node:
            self.node.destroy_node()
        if self._owns_context:
            rclpy.try_shutdown()
