"""Language-model back ends (chat with streaming and cancel)."""

from smolfusion_ros.backends.llm.base import (
    ChatMessage,
    GenerationSettings,
    LLMBackend,
    LLMBackendError,
)

__all__ = ["ChatMessage", "GenerationSettings", "LLMBackend", "LLMBackendError"]
