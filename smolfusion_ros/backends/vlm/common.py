"""What the VLM back ends share: image checks and encoding, chat messages, results."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from smolfusion_ros.backends.vlm.base import VisionBackendError, VisionResult

DEFAULT_PROMPT = "Describe what you see in one short sentence."

TokenCallback = Callable[[str], None]


def check_image(image_rgb: np.ndarray) -> np.ndarray:
    """Return `image_rgb` as a contiguous HxWx3 uint8 array, or raise VisionBackendError."""
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise VisionBackendError(f"expected an HxWx3 RGB image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise VisionBackendError(f"expected a uint8 RGB image, got dtype {image.dtype}")
    return np.ascontiguousarray(image)


def image_data_uri(image_rgb: np.ndarray, image_format: str = "png", quality: int = 90) -> str:
    """Encode an HxWx3 uint8 RGB array as a `data:image/...;base64,` URI (PNG or JPEG)."""
    import cv2

    image = check_image(image_rgb)
    fmt = image_format.lower()
    if fmt in ("jpg", "jpeg"):
        ext, mime, params = ".jpg", "image/jpeg", [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)]
    elif fmt == "png":
        ext, mime, params = ".png", "image/png", []
    else:
        raise VisionBackendError(f"unsupported image format {image_format!r} (png or jpeg)")
    ok, encoded = cv2.imencode(ext, image[:, :, ::-1], params)  # OpenCV encodes BGR
    if not ok:
        raise VisionBackendError(f"could not encode the image as {fmt}")
    return f"data:{mime};base64,{base64.b64encode(encoded.tobytes()).decode('ascii')}"


def vision_messages(
    image_uri: str, prompt: str, system_prompt: str = ""
) -> list[dict[str, object]]:
    """OpenAI-style chat messages: optional system prompt, then one image and the question."""
    messages: list[dict[str, object]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_uri}},
                {"type": "text", "text": prompt},
            ],
        }
    )
    return messages


class AnswerCollector:
    """The per-token bookkeeping of every VLM back end: the text so far, the token count, the
    first-token time and the caller's `on_token`, timed from when the request was taken."""

    def __init__(self, backend: Any, max_tokens: int, on_token: TokenCallback | None) -> None:
        if max_tokens < 1:
            raise VisionBackendError(f"max_tokens must be at least 1, got {max_tokens}")
        self._backend = backend
        self._on_token = on_token
        self.start = time.monotonic()
        self.pieces: list[str] = []
        self.tokens = 0
        self.ttft: float | None = None

    def add(self, piece: str, tokens: int = 1) -> None:
        """One streamed piece of text (`tokens` tokens of it); empty pieces are skipped."""
        if not piece:
            return
        if self.ttft is None:
            self.ttft = time.monotonic() - self.start
        self.tokens += tokens
        self.pieces.append(piece)
        if self._on_token is not None:
            self._on_token(piece)

    def result(self, cancelled: bool, tokens: int | None = None, **details: Any) -> VisionResult:
        """The VisionResult, timed from the request; `tokens` overrides the count when the back
        end knows it better; `details` are back-end specific."""
        return VisionResult(
            text="".join(self.pieces).strip(),
            kind=self._backend.kind,
            model=self._backend.model_name,
            latency_s=time.monotonic() - self.start,
            details={
                "backend": self._backend.name,
                **details,
                "tokens": self.tokens if tokens is None else tokens,
                "ttft_s": self.ttft,
                "cancelled": cancelled,
            },
        )
