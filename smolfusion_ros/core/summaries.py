"""Folding older turns into a running summary, so long conversations fit the context."""

from __future__ import annotations

from collections.abc import Sequence

from smolfusion_ros.backends.llm.base import ChatMessage
from smolfusion_ros.core.sessions import TurnRecord

SUMMARY_INSTRUCTIONS = (
    "You keep notes on a conversation between a person and a robot. Write one short paragraph "
    "of at most three sentences that keeps names, facts, preferences, requests and open "
    "questions. Write only the summary."
)

_SPEAKERS = {"user": "Person", "assistant": "Robot", "system": "Note"}


def build_summary_messages(previous: str, turns: Sequence[TurnRecord]) -> list[ChatMessage]:
    """Messages asking the model for an updated summary of `previous` plus `turns`."""
    lines = [f"{_SPEAKERS.get(t.role, t.role)}: {t.text}" for t in turns]
    parts = []
    if previous:
        parts.append(f"Summary so far: {previous}")
    parts.append("Conversation:\n" + "\n".join(lines))
    parts.append("Write the updated summary.")
    return [
        {"role": "system", "content": SUMMARY_INSTRUCTIONS},
        {"role": "user", "content": "\n\n".join(parts)},
    ]
