"""Which turns need the camera: a small keyword classifier with configurable patterns.

A turn is visual when the caller says so (use_vision=always), or, with use_vision=auto, when
one of the patterns matches the question as whole words. Patterns are regular expressions
matched case-insensitively; they come from the profile (vision.visual_patterns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_VISUAL_PATTERNS = (
    r"\bwhat (?:do|can) you see\b",
    r"\bcan you see\b",
    r"\bdo you see\b",
    r"\bwhat am i (?:holding|wearing|doing|showing)\b",
    r"\bwhat(?:'s| is) (?:this|that) (?:i'?m|i am) (?:holding|wearing|showing)\b",
    r"\bhow do i look\b",
    r"\bdo i look\b",
    r"\blook at (?:this|me|that|my)\b",
    r"\bwhat(?:'s| is) in front of you\b",
    r"\bwhat(?:'s| is) around you\b",
    r"\bdescribe (?:(?:the|this|my|your) )?(?:scene|room|picture|image|view|surroundings|me"
    r"|what you see)\b",
    r"\bwhat colou?r (?:is|are) (?:my|this|that|these|those)\b",
    r"\bread (?:this|that|the sign|the text|what)\b",
    r"\bhow many (?:people|persons|fingers|hands)\b",
    r"\bam i smiling\b",
    r"\bwho (?:is|am i|are you looking at)\b.*\b(?:here|there|in front|camera)\b",
)


@dataclass(frozen=True)
class Route:
    visual: bool
    reason: str  # "always", "never", "pattern: <pattern>", "no pattern matched"


class VisualTurnClassifier:
    def __init__(self, patterns: Iterable[str] = DEFAULT_VISUAL_PATTERNS) -> None:
        self._patterns = []
        for pattern in patterns:
            try:
                self._patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as exc:
                raise ValueError(f"invalid visual pattern {pattern!r}: {exc}") from None

    def route(self, text: str, use_vision: str = "auto") -> Route:
        if use_vision == "always":
            return Route(True, "always")
        if use_vision == "never":
            return Route(False, "never")
        normalised = " ".join(text.replace("\u2019", "'").split())
        for pattern in self._patterns:
            if pattern.search(normalised):
                return Route(True, f"pattern: {pattern.pattern}")
        return Route(False, "no pattern matched")
