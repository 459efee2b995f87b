"""text_input_node: typed text in, utterances out.

Subscribes:  text_in (std_msgs/String)
Publishes:   utterance (smolfusion_ros/Utterance, source=text, is_final=true)
Parameters:  session_id (session the text belongs to), persona (optional persona id)
The answer arrives on `response` (Turn) and token by token on `response_stream`.
"""

from __future__ import annotations

from rclpy.node import Node
from std_msgs.msg import String

from smolfusion_ros.core.requests import RequestRejected, validate_session_id
from smolfusion_ros.msg import Utterance
from smolfusion_ros.nodes.parameters import ConfigError, ParamSpec, declare_parameters
from smolfusion_ros.nodes.runner import run_node


def parameter_specs() -> list[ParamSpec]:
    """Every parameter of text_input_node, read once at start."""
    return [
        ParamSpec("session_id", "default", "session id attached to every utterance"),
        ParamSpec("persona", "", "persona id attached to every utterance (empty = default)"),
    ]


class TextInputNode(Node):
    def __init__(self, node_name: str = "text_input_node", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        p = declare_parameters(self, parameter_specs())
        try:
            self._session_id = validate_session_id(p["session_id"])
        except RequestRejected as exc:
            raise ConfigError(str(exc)) from None
        self._persona = p["persona"]
        self._publisher = self.create_publisher(Utterance, "utterance", 10)
        self.create_subscription(String, "text_in", self._on_text, 10)

    def _on_text(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            return  # blank lines are not questions
        self._publisher.publish(
            Utterance(
                stamp=self.get_clock().now().to_msg(),
                session_id=self._session_id,
                text=text,
                is_final=True,
                confidence=1.0,
                locale="",
                source=Utterance.SOURCE_TEXT,
                persona=self._persona,
            )
        )


def main() -> None:
    run_node(TextInputNode)


if __name__ == "__main__":
    main()
