"""A chat call while the model is still loading gets success=false, then the node serves."""

from __future__ import annotations

import threading

import pytest
from conftest import CPU_DEMO_PARAMS, make_client, unique_namespace

from smolfusion_ros.backends import registry
from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend

pytestmark = [pytest.mark.ros, pytest.mark.model]

LOAD_GATE = threading.Event()


class GatedLoadLlamaBackend(LlamaCppChatBackend):
    """Stand-in for a slow model load: the real llama.cpp back end, held at a gate first.

    SmolLM2 loads in about 0.15 s, too fast to call reliably while it loads.
    """

    def load(self) -> None:
        LOAD_GATE.wait(60)
        super().load()


def test_chat_while_loading_is_rejected_then_answered(ros_node):
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from smolfusion_ros.nodes.fusion_node import FusionNode

    registry.register_llm_backend("gated_llama_cpp", GatedLoadLlamaBackend)
    namespace = unique_namespace("loading")
    context = rclpy.Context()
    context.init(args=["--ros-args", "--params-file", str(CPU_DEMO_PARAMS)])
    node = FusionNode(
        namespace=namespace,
        context=context,
        parameter_overrides=[Parameter("llm.backend", value="gated_llama_cpp")],
    )
    # In-process, nothing autostarts it (the runner does that for node processes).
    assert node.bring_up() is None, node.last_transition_error
    executor = MultiThreadedExecutor(num_threads=8, context=context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        client = make_client(ros_node, namespace)
        client.wait_for_servers(30)
        response = client.chat("Hello", max_tokens=8, timeout=30)
        assert not response.success
        assert "still loading" in response.error
        goal_result = client.converse("Hello", max_tokens=8).result(30)
        assert not goal_result.success and "still loading" in goal_result.error
        LOAD_GATE.set()
        client.wait_until_ready(60)
        response = client.chat("Hello", max_tokens=8, timeout=30)
        assert response.success, response.error
    finally:
        LOAD_GATE.set()
        executor.shutdown()
        spinner.join(5)
        node.close()
        node.destroy_node()
        context.try_shutdown()
