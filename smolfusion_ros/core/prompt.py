"""Prompt assembly, laid out for llama.cpp's prefix cache.

    system:    persona prompt, then the running summary       (stable: changes when rewritten)
    history:   the conversation's recent turns, oldest first  (grows at the end only)
    user:      [volatile context: what the robot sees now]    (new every turn)
               the person's words

llama.cpp keeps the KV cache of the previous prompt and evaluates only what follows the
longest common token prefix. Anything that changes every turn (the scene loop rewrites its
description every interval) therefore goes into the last message, never into the system
message: there it would invalidate the whole history on every turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from smolfusion_ros.backends.llm.base import ChatMessage
from smolfusion_ros.core.sessions import TurnRecord


class PromptTooLongError(ValueError):
    """The question (with the system prompt and the answer's reserve) exceeds the context."""


# Chat templates add a few tokens around each message.
_PER_MESSAGE_OVERHEAD = 6


def system_message(system_prompt: str, summary_text: str = "") -> str:
    """The stable head: the persona, then the summary of turns no longer in the window."""
    if summary_text:
        return f"{system_prompt}\nEarlier in this conversation: {summary_text}"
    return system_prompt


def context_block(scene_text: str = "", notes: Sequence[str] = ()) -> str:
    """The volatile context of one turn, bracketed so the model can tell it from the words."""
    lines = [f"[What you see right now: {scene_text}]"] if scene_text else []
    lines += [f"[{note}]" for note in notes if note]
    return "\n".join(lines)


def user_message(user_text: str, scene_text: str = "", notes: Sequence[str] = ()) -> str:
    """The last message: this turn's context block, then the person's words."""
    block = context_block(scene_text, notes)
    return f"{block}\n{user_text}" if block else user_text


def build_messages(
    system_prompt: str,
    history: Sequence[TurnRecord],
    user_text: str,
    *,
    scene_text: str = "",
    summary_text: str = "",
    notes: Sequence[str] = (),
    context_size: int,
    reserve_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[ChatMessage]:
    """Return chat messages that fit `context_size - reserve_tokens` tokens.

    The newest history turns are kept; older ones are dropped whole, never cut mid-turn.
    `scene_text` and `notes` (e.g. retrieved knowledge) form the volatile context block in
    front of the person's words in the last message (see user_message()).
    Raises PromptTooLongError when even the system prompt and the question do not fit.
    """
    head: list[ChatMessage] = [
        {"role": "system", "content": system_message(system_prompt, summary_text)}
    ]
    tail: list[ChatMessage] = [
        {"role": "user", "content": user_message(user_text, scene_text, notes)}
    ]
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
