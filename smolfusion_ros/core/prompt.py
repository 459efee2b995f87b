"""Prompt assembly: persona, scene, as much recent history as fits, then the user's words."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from smolfusion_ros.backends.llm.base import ChatMessage
from smolfusion_ros.core.sessions import TurnRecord


class PromptTooLongError(ValueError):
    """The question (with the system prompt and the answer's reserve) exceeds the context."""


# Chat templates add a few tokens around each message.
_PER_MESSAGE_OVERHEAD = 6


def build_messages(
    system_prompt: str,
    history: Sequence[TurnRecord],
    user_text: str,
    *,
    scene_text: str = "",
    summary_text: str = "",
    context_size: int,
    reserve_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[ChatMessage]:
    """Return chat messages that fit `context_size - reserve_tokens` tokens.

    The newest history turns are kept; older ones are dropped whole, never cut mid-turn.
    Raises PromptTooLongError when even the system prompt and the question do not fit.
    """
    system = system_prompt
    if summary_text:
        system += f"\nEarlier in this conversation: {summary_text}"
    if scene_text:
        system += f"\nWhat you currently see: {scene_text}"
    head: list[ChatMessage] = [{"role": "system", "content": system}]
    tail: list[ChatMessage] = [{"role": "user", "content": user_text}]
    budget = context_size - reserve_tokens
    budget -= sum(count_tokens(m["content"]) + _PER_MESSAGE_OVERHEAD for m in head + tail)
    if budget < 0:
        raise PromptTooLongError(
            f"the question and max_tokens={reserve_tokens} do not fit the model's context of "
            f"{context_size} tokens"
        )
    kept: list[ChatMessage] = []
    for turn in reversed(history):
        cost = count_tokens(turn.text) + _PER_MESSAGE_OVERHEAD
        if cost > budget:
            break
        budget -= cost
        kept.append({"role": turn.role, "content": turn.text})
    kept.reverse()
    # Chat templates expect a user turn first after the system prompt.
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return head + kept + tail
