"""Real test images: photos shipped in scikit-image's data folder (no download), and signs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

skimage = pytest.importorskip("skimage", reason="scikit-image ships the test photos")
DATA = Path(skimage.__file__).resolve().parent / "data"


def photo(name: str) -> np.ndarray:
    """A real photo from scikit-image's data folder, read from disk (no download), as RGB."""
    bgr = cv2.imread(str(DATA / name), cv2.IMREAD_COLOR)
    assert bgr is not None, f"missing test photo {name}"
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def sign(text: str = "EXIT", size: tuple[int, int] = (240, 640)) -> np.ndarray:
    img = np.full((*size, 3), 255, np.uint8)
    cv2.putText(img, text, (40, size[0] // 2 + 50), cv2.FONT_HERSHEY_SIMPLEX, 4, (0, 0, 0), 10)
    return img
