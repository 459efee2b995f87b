"""Chat requests and their validation: every bad request gets one clear error message."""

from __future__ import annotations

import math
from dataclasses import dataclass

# Session ids are checked in a leaf module that memory/ uses too; imported here so that
# core.requests stays the one place callers import them from.
from smolfusion_ros.ids import SESSION_ID_PATTERN, RequestRejected, validate_session_id

__all__ = [
    "SESSION_ID_PATTERN",
    "ChatRequest",
    "RequestLimits",
    "RequestRejected",
    "normalise_request",
    "validate_session_id",
]

USE_VISION_VALUES = ("auto", "always", "never")


@dataclass(frozen=True)
class ChatRequest:
    text: str
    session_id: str = ""
    persona: str = ""
    use_vision: str = "auto"
    max_tokens: int = 0
    source: str = "text"  # where the user's words came from: text, speech, service, action
    # Seconds the caller waits for the answer (0 = no deadline). The job's deadline: work nobody
    # waits for any more is dropped from the queue or stopped mid-answer (ChatJob.deadline).
    timeout_s: float = 0.0


@dataclass(frozen=True)
class RequestLimits:
    max_input_chars: int = 4000
    max_tokens_limit: int = 1024
    default_session_id: str = "default"


def normalise_request(request: ChatRequest, limits: RequestLimits) -> ChatRequest:
    """Check a request and fill in defaults; raise RequestRejected with a clear message."""
    text = request.text.strip()
    if not text:
        raise RequestRejected("text is empty")
    if len(text) > limits.max_input_chars:
        raise RequestRejected(
            f"text is {len(text)} characters long; the limit is {limits.max_input_chars}"
        )
    if "\x00" in text:
        raise RequestRejected("text contains a NUL character")
    if not 1 <= request.max_tokens <= limits.max_tokens_limit:
        raise RequestRejected(
            f"max_tokens must be between 1 and {limits.max_tokens_limit}, got {request.max_tokens}"
        )
    use_vision = request.use_vision.strip().lower() or "auto"
    if use_vision not in USE_VISION_VALUES:
        raise RequestRejected(
            f"use_vision must be one of {', '.join(USE_VISION_VALUES)}, got {request.use_vision!r}"
        )
    timeout_s = float(request.timeout_s)
    if not (math.isfinite(timeout_s) and timeout_s >= 0):
        raise RequestRejected(
            f"timeout_s must be 0 (no limit) or positive seconds, got {timeout_s}"
        )
    session_id = validate_session_id(request.session_id, limits.default_session_id)
    return ChatRequest(
        text=text,
        session_id=session_id,
        persona=request.persona.strip(),
        use_vision=use_vision,
        max_tokens=request.max_tokens,
        source=request.source,
        timeout_s=timeout_s,
    )
