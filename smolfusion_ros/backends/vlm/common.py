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


def vlm_result(
    backend: Any,
    text: str,
    start: float,
    tokens: int,
    ttft: float | None,
    cancelled: bool,
    **details: Any,
) -> VisionResult:
    """A VLM's VisionResult: latency from `start` (time.monotonic()), token count, first-token
    time and whether it was cancelled, plus back-end specific `details`."""
    return VisionResult(
        text=text.strip(),
        kind=backend.kind,
        model=backend.model_name,
        latency_s=time.monotonic() - start,
        details={
            "backend": backend.name,
            **details,
            "tokens": tokens,
            "ttft_s": ttft,
            "cancelled": cancelled,
        },
    )
