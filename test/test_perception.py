"""The perception back end on real photos (scikit-image's bundled data) and synthesised text."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest
from images import photo, sign

from smolfusion_ros.backends.registry import create_vision_backend, vision_backend_names
from smolfusion_ros.backends.vlm.base import VisionBackendError
from smolfusion_ros.backends.vlm.perception import SUMMARY_MARKER, PerceptionBackend


@pytest.fixture(scope="module")
def fast() -> PerceptionBackend:
    """Faces, smiles and people only (no OCR): about 0.1 s a frame."""
    backend = PerceptionBackend(ocr=False)
    backend.load()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def full() -> PerceptionBackend:
    backend = PerceptionBackend(ocr=True, ocr_budget_s=10.0)
    backend.load()
    yield backend
    backend.close()


def describe(backend, image, prompt: str = "", cancel: threading.Event | None = None):
    return backend.describe(image, prompt, cancel or threading.Event())


def test_registered_and_says_what_it_is() -> None:
    assert "perception" in vision_backend_names()
    backend = create_vision_backend("perception", ocr=False, max_side=320)
    assert isinstance(backend, PerceptionBackend)
    assert backend.name == "perception" and backend.kind == "perception"
    backend.load()
    assert "haar_face" in backend.detectors
    assert backend.model_name.startswith("perception(")
    backend.close()


def test_face_and_person_on_the_astronaut_photo(fast: PerceptionBackend) -> None:
    result = describe(fast, photo("astronaut.png"))
    assert result.text.startswith(SUMMARY_MARKER)
    assert result.kind == "perception"
    assert result.has_person and result.person_count == 1
    (face,) = result.details["faces"]
    x, y, w, h = face["box"]
    # Eileen Collins' face is at about (177, 67, 93, 93) in the 512x512 photo.
    assert abs(x - 177) < 25 and abs(y - 67) < 25 and 60 < w < 130
    assert "1 person" in result.text and "facing the camera" in result.text
    # She smiles broadly: the smile cascade fires far above its threshold (about 440 vs 60).
    assert result.smiling and face["smiling"] and "smiling" in result.text
    assert "faces" in result.details["ms"]
    assert result.latency_s < 5.0


@pytest.mark.parametrize("name", ["coffee.png", "chelsea.png", "rocket.jpg"])
def test_no_person_on_photos_without_people(fast: PerceptionBackend, name: str) -> None:
    result = describe(fast, photo(name))
    assert result.text.startswith(SUMMARY_MARKER)
    assert not result.has_person and result.person_count == 0
    assert result.details["faces"] == [] and result.details["bodies"] == []
    assert "no person seen" in result.text


def test_ocr_reads_large_text(full: PerceptionBackend) -> None:
    result = describe(full, sign("EXIT"))
    texts = [t["text"] for t in result.details["texts"]]
    assert "EXIT" in texts, result.details
    assert "text visible: 'EXIT'" in result.text
    assert "rapidocr" in result.details["detectors"] and "text" in result.details["ms"]
    assert all(t["score"] >= 0.8 for t in result.details["texts"])
    assert not result.has_person


def test_prompt_puts_relevant_details_first(full: PerceptionBackend) -> None:
    image = photo("astronaut.png")
    image = np.ascontiguousarray(np.vstack([image, cv2.resize(sign("EXIT"), (512, 192))]))
    plain = describe(full, image)
    asked = describe(full, image, "What does the sign say?")
    assert plain.text.startswith(SUMMARY_MARKER) and asked.text.startswith(SUMMARY_MARKER)
    assert plain.has_person and "EXIT" in plain.text
    assert plain.text.index("person") < plain.text.index("EXIT")
    assert asked.text.index("EXIT") < asked.text.index("person")


def test_cancel_before_start_returns_at_once(full: PerceptionBackend) -> None:
    cancel = threading.Event()
    cancel.set()
    start = time.perf_counter()
    result = describe(full, photo("astronaut.png"), cancel=cancel)
    assert time.perf_counter() - start < 0.2
    assert result.text.startswith(SUMMARY_MARKER)
    assert result.details["cancelled"] is True
    assert result.details["detectors"] == [] and result.details["faces"] == []
    assert "cancelled" in result.text


def test_cancel_during_ocr_returns_partial_result(full: PerceptionBackend) -> None:
    image = np.ascontiguousarray(np.tile(sign("EXIT 42"), (4, 2, 1)))
    cancel = threading.Event()
    timer = threading.Timer(0.15, cancel.set)
    start = time.perf_counter()
    timer.start()
    try:
        result = describe(full, image, cancel=cancel)
    finally:
        timer.cancel()
    assert time.perf_counter() - start < 2.0
    assert result.text.startswith(SUMMARY_MARKER)
    assert result.details["cancelled"] is True
    # Let the abandoned OCR call finish so that later tests get the OCR lock.
    deadline = time.monotonic() + 10
    while full._ocr_lock.locked() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_ocr_time_budget_is_kept() -> None:
    backend = PerceptionBackend(ocr=True, ocr_budget_s=0.01)
    backend.load()
    start = time.perf_counter()
    result = describe(backend, sign("EXIT"))
    assert time.perf_counter() - start < 1.0
    assert "budget" in result.details["skipped"]["text"]
    assert result.details["texts"] == []
    assert result.text.startswith(SUMMARY_MARKER)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((1, 1, 3), np.uint8),
        np.zeros((480, 640, 3), np.uint8),
        np.full((2, 3000, 3), 255, np.uint8),
        np.zeros((480, 640), np.uint8),
        np.zeros((48, 64, 4), np.uint8),
        np.random.default_rng(0).random((120, 160, 3)),  # float 0..1
    ],
    ids=["1x1", "black", "thin", "gray", "rgba", "float"],
)
def test_odd_images_do_not_crash(full: PerceptionBackend, image: np.ndarray) -> None:
    result = describe(full, image)
    assert result.text.startswith(SUMMARY_MARKER)
    assert not result.has_person
    assert result.details["image_size"] == [image.shape[1], image.shape[0]]


@pytest.mark.parametrize(
    "image",
    [np.zeros((0, 0, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), "not an image", None],
    ids=["empty", "two-channel", "string", "none"],
)
def test_unusable_inputs_give_a_result(fast: PerceptionBackend, image) -> None:
    result = describe(fast, image)
    assert result.text == f"{SUMMARY_MARKER} no usable image."
    assert not result.has_person


def test_huge_image_is_downscaled_first(full: PerceptionBackend) -> None:
    huge = np.zeros((3000, 4000, 3), np.uint8)
    huge[:, 500:3500] = cv2.resize(
        photo("astronaut.png"), (3000, 3000), interpolation=cv2.INTER_LINEAR
    )
    start = time.perf_counter()
    result = describe(full, huge)
    assert time.perf_counter() - start < 10.0
    assert result.details["image_size"] == [4000, 3000]
    assert result.details["scale"] < 0.2
    assert result.has_person
    # Boxes come back in the input image's pixels.
    x, y, w, h = result.details["faces"][0]["box"]
    # About (500 + 177 * 5.86, 67 * 5.86, 93 * 5.86) = (1537, 393, 545).
    assert 1350 < x < 1750 and 250 < y < 550 and 400 < w < 700


def test_load_fails_with_one_line_when_no_detector_loads() -> None:
    backend = PerceptionBackend(use_haar=False, use_mediapipe=False, ocr=False)
    with pytest.raises(VisionBackendError) as info:
        backend.load()
    message = str(info.value)
    assert "no detector could be loaded" in message and "\n" not in message


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError):
        PerceptionBackend(max_side=8)
    with pytest.raises(ValueError):
        PerceptionBackend(ocr_budget_s=0)


def test_mediapipe_detectors_when_installed() -> None:
    pytest.importorskip("mediapipe", reason="mediapipe is optional (see requirements/vision.txt)")
    backend = PerceptionBackend(ocr=False)
    backend.load()
    if "mediapipe_face" not in backend.detectors:
        pytest.skip(f"mediapipe has no usable mp.solutions: {backend.load_errors}")
    result = describe(backend, photo("astronaut.png"))
    assert result.has_person and result.details["faces"][0]["source"] == "mediapipe"
    assert not describe(backend, photo("coffee.png")).has_person
    # The cameraman looks down at his camera: a face, not a smile.
    camera = describe(backend, photo("camera.png"))
    assert camera.has_person and not camera.smiling
    backend.close()


# ---- OpenCV without cv2.data (Debian/Ubuntu's python3-opencv) ------------------------------


def _apt_layout(tmp_path):
    """The cascades where apt's opencv-data installs them, copied from pip's opencv."""
    from pathlib import Path

    from smolfusion_ros.backends.vlm.perception import HAAR_FILES

    apt_dir = tmp_path / "usr/share/opencv4/haarcascades"
    apt_dir.mkdir(parents=True)
    for name in HAAR_FILES.values():
        (apt_dir / name).write_bytes((Path(cv2.data.haarcascades) / name).read_bytes())
    return apt_dir


def test_without_cv2_data_the_cascades_come_from_apts_opencv_data(monkeypatch, tmp_path):
    from smolfusion_ros.backends.vlm import perception

    apt_dir = _apt_layout(tmp_path)
    monkeypatch.delattr(cv2, "data")  # as Debian/Ubuntu's python3-opencv
    monkeypatch.setattr(perception, "SYSTEM_HAAR_DIRS", (str(tmp_path / "nope"), str(apt_dir)))
    backend = PerceptionBackend(ocr=False, use_mediapipe=False)
    backend.load()
    assert "haar_face" in backend.detectors and "haar" not in backend.load_errors
    result = describe(backend, photo("astronaut.png"))
    assert result.has_person and "1 person" in result.text and "facing the camera" in result.text
    backend.close()


def test_without_any_cascades_it_says_so_once_and_in_every_summary(monkeypatch, tmp_path, caplog):
    import logging

    from smolfusion_ros.backends.vlm import perception

    monkeypatch.delattr(cv2, "data")
    monkeypatch.setattr(perception, "SYSTEM_HAAR_DIRS", (str(tmp_path / "empty"),))
    monkeypatch.setattr(perception, "_logged_once", set())
    with caplog.at_level(logging.INFO, logger=perception.__name__):
        backend = PerceptionBackend(ocr=True, use_mediapipe=False, ocr_budget_s=10.0)
        backend.load()  # OCR still works, so the back end loads
        PerceptionBackend(ocr=True, use_mediapipe=False).load()  # a second load: no new line
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    message = warnings[0].getMessage()
    assert "Haar cascades" in message and "apt-get install opencv-data" in message
    assert str(tmp_path / "empty") in message
    assert backend.detectors == ["rapidocr"] and not backend.sees_people
    result = describe(backend, photo("astronaut.png"))
    assert "people not checked" in result.text, result.text
    assert not result.has_person
    backend.close()
    # No detector at all: load fails with one line that names the missing package.
    with pytest.raises(VisionBackendError, match="opencv-data"):
        PerceptionBackend(ocr=False, use_mediapipe=False).load()
