"""Text drawn onto a frame, for the debug_image topic (rviz / rqt_image_view)."""

from __future__ import annotations

import textwrap

import cv2
import numpy as np


def draw_caption(rgb: np.ndarray, text: str, max_lines: int = 6) -> np.ndarray:
    """A copy of `rgb` with `text` wrapped on a dark band at the bottom."""
    image = np.ascontiguousarray(rgb).copy()
    height, width = image.shape[:2]
    scale = max(0.35, min(1.0, width / 900))
    line_height = int(26 * scale) + 4
    chars = max(10, int(width / (11 * scale)))
    lines = textwrap.wrap(" ".join(text.split()), chars)[:max_lines] or ["(no description)"]
    band = min(height, line_height * len(lines) + 8)
    image[height - band :] = (image[height - band :] * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        y = height - band + line_height * (i + 1)
        cv2.putText(
            image,
            line,
            (6, y),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale * 0.7,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return image
