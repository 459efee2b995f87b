"""The vision back-end protocol shared by VLMs and the perception back end."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class VisionBackendError(RuntimeError):
    """A vision back end could not load or run; the message is meant for the operator."""


@dataclass(frozen=True)
class VisionResult:
    """What a vision back end says about one image.

    `kind` is "vlm" for a vision-language model's answer or caption, "perception" for a
    factual summary assembled from detectors (never presented as a VLM caption).
    """

    text: str
    kind: str
    model: str
    latency_s: float = 0.0
    has_person: bool = False
    person_count: int = 0
    smiling: bool = False
    details: dict[str, Any] = field(default_factory=dict)


class VisionBackend(Protocol):
    """Image + prompt -> text. Used from one thread at a time (the scene worker).

    `describe` must check `cancel` where it can (between tokens for a VLM, between detectors
    for perception) and return early, with whatever it has, when it is set.
    """

    name: str
    kind: str  # "vlm" | "perception"

    def load(self) -> None:
        """Load weights; raises VisionBackendError with a clear message."""

    @property
    def model_name(self) -> str: ...

    def describe(
        self,
        image_rgb: np.ndarray,
        prompt: str,
        cancel: threading.Event,
        max_tokens: int = 96,
    ) -> VisionResult:
        """Answer `prompt` about an HxWx3 uint8 RGB image ("" = describe the scene)."""

    def close(self) -> None: ...
