"""One conversation turn as core/ (the chat engine, prompts, summaries) and memory/ (the SQLite
session store) both see it.

A leaf module like smolfusion_ros.ids: it imports nothing from this package, so memory/ can
build turns without importing core/ (memory sits below core in the layering).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TurnRecord:
    role: str  # "user" | "assistant"
    text: str
    source: str
    stamp: float
    latency_s: float = 0.0
    turn_id: int = 0  # assigned by the store; increases within a session
