"""Perception back end: a factual scene summary from detectors that ship inside packages.

This is the offline default vision back end. It is not a vision-language model and says so:
every text starts with `SUMMARY_MARKER`. Detectors, each optional and used when it loads:

- mediapipe's legacy `mp.solutions` (face detection, hands, pose), when an installed mediapipe
  still has them (0.10.21 and older; not pinned, see requirements/vision.txt);
- OpenCV's Haar cascades: frontal faces, smiles (inside each face), upper and full bodies; the
  fallback for faces and people. pip's opencv bundles them (`cv2.data.haarcascades`);
  Debian/Ubuntu's python3-opencv has no `cv2.data`, and the files come from apt's
  `opencv-data` (/usr/share/opencv4/haarcascades). Without them the back end says so once (a
  warning) and in every summary ("people not checked"), never silently;
- RapidOCR with its bundled PP-OCR ONNX models (visible text), within a time budget.

Frames are downscaled first (`max_side`); boxes are reported in the input image's pixels.
`cancel` is checked between detectors and while OCR runs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from smolfusion_ros.backends.vlm.base import VisionBackendError, VisionResult

SUMMARY_MARKER = "Perception summary (not a VLM caption):"

HAAR_FILES = {
    "face": "haarcascade_frontalface_alt2.xml",
    "smile": "haarcascade_smile.xml",
    "upper": "haarcascade_upperbody.xml",
    "full": "haarcascade_fullbody.xml",
}
# Where apt's opencv-data puts the cascades (Debian/Ubuntu, OpenCV 4 and older layouts), and
# a source build's default prefix; searched after cv2.data.
SYSTEM_HAAR_DIRS = (
    "/usr/share/opencv4/haarcascades",
    "/usr/share/opencv/haarcascades",
    "/usr/local/share/opencv4/haarcascades",
)
HAAR_INSTALL_HINT = "Debian/Ubuntu: sudo apt-get install opencv-data"

_log = logging.getLogger(__name__)
_logged_once: set[str] = set()


def _log_once(message: str, level: int = logging.INFO) -> None:
    if message not in _logged_once:
        _logged_once.add(message)
        _log.log(level, message)


def find_haar_directory(cv2: Any) -> tuple[Path | None, list[str]]:
    """The first directory holding every cascade the back end uses, and where it looked:
    cv2.data.haarcascades (pip's opencv) first, then SYSTEM_HAAR_DIRS."""
    candidates = []
    bundled = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if bundled:
        candidates.append(str(bundled))
    candidates += [d for d in SYSTEM_HAAR_DIRS if d not in candidates]
    for directory in candidates:
        if all((Path(directory) / name).is_file() for name in HAAR_FILES.values()):
            return Path(directory), candidates
    return None, candidates


def _overlap(a: list[int], b: list[int]) -> float:
    """Intersection over the smaller box's area, for boxes [x, y, w, h]."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    smaller = max(1, min(aw * ah, bw * bh))
    return iw * ih / smaller


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class PerceptionBackend:
    """Faces, smiles, people, hands and visible text → one short factual sentence."""

    name = "perception"
    kind = "perception"

    def __init__(
        self,
        *,
        ocr: bool = True,
        ocr_budget_s: float = 1.5,
        ocr_threads: int = 1,
        ocr_max_side: int = 1280,
        ocr_min_score: float = 0.8,
        use_mediapipe: bool = True,
        use_haar: bool = True,
        max_side: int = 640,
        face_min_score: float = 0.6,
        face_min_neighbors: int = 8,
        smile_min_neighbors: int = 60,
        body_min_neighbors: int = 12,
        hand_min_score: float = 0.6,
        pose_min_score: float = 0.6,
        max_texts: int = 5,
    ) -> None:
        if max_side < 64 or ocr_max_side < 64:
            raise ValueError("max_side and ocr_max_side must be at least 64 pixels")
        if ocr_budget_s <= 0:
            raise ValueError("ocr_budget_s must be positive")
        self._ocr_wanted = ocr
        self._ocr_budget_s = float(ocr_budget_s)
        self._ocr_threads = max(1, int(ocr_threads))
        self._ocr_max_side = int(ocr_max_side)
        self._ocr_min_score = float(ocr_min_score)
        self._mp_wanted = use_mediapipe
        self._haar_wanted = use_haar
        self._max_side = int(max_side)
        self._face_min_score = float(face_min_score)
        self._face_min_neighbors = int(face_min_neighbors)
        self._smile_min_neighbors = int(smile_min_neighbors)
        self._body_min_neighbors = int(body_min_neighbors)
        self._hand_min_score = float(hand_min_score)
        self._pose_min_score = float(pose_min_score)
        self._max_texts = int(max_texts)

        self._cv2: Any = None
        self._haar_face: Any = None
        self._haar_smile: Any = None
        self._haar_upper: Any = None
        self._haar_full: Any = None
        self._mp_face: Any = None
        self._mp_hands: Any = None
        self._mp_pose: Any = None
        self._ocr: Any = None
        self._ocr_lock = threading.Lock()  # held while an OCR call runs (it cannot be stopped)
        self._loaded = False
        self.load_errors: dict[str, str] = {}

    # ------------------------------------------------------------------ loading

    @property
    def model_name(self) -> str:
        return "perception(" + "+".join(self.detectors) + ")"

    @property
    def detectors(self) -> list[str]:
        """The detectors that loaded, in the order they run."""
        names = []
        if self._mp_face is not None:
            names.append("mediapipe_face")
        if self._haar_face is not None:
            names.append("haar_face")
        if self._haar_smile is not None:
            names.append("haar_smile")
        if self._mp_pose is not None:
            names.append("mediapipe_pose")
        if self._haar_upper is not None:
            names.append("haar_body")
        if self._mp_hands is not None:
            names.append("mediapipe_hands")
        if self._ocr is not None:
            names.append("rapidocr")
        return names

    def load(self) -> None:
        if self._loaded:
            return
        try:
            import cv2
        except ImportError as exc:  # opencv is a runtime dependency; say so plainly
            raise VisionBackendError(
                f"perception back end needs OpenCV: pip install opencv-python-headless ({exc})"
            ) from None
        self._cv2 = cv2
        if self._mp_wanted:
            self._load_mediapipe()
        if self._haar_wanted:
            self._load_haar()
        if self._ocr_wanted:
            self._load_ocr()
        if not self.detectors:
            reasons = "; ".join(f"{k}: {v}" for k, v in self.load_errors.items()) or "all disabled"
            raise VisionBackendError(
                f"perception back end: no detector could be loaded ({reasons})"
            )
        self._loaded = True
        _log.info("perception back end ready: %s", ", ".join(self.detectors))

    def _load_haar(self) -> None:
        cv2 = self._cv2
        base, searched = find_haar_directory(cv2)
        if base is None:
            self._note_missing(
                "haar",
                "OpenCV's Haar cascades are in none of "
                f"{', '.join(searched)}: faces, smiles and bodies are not detected "
                f"({HAAR_INSTALL_HINT})",
                warn=True,
            )
            return
        cascades = {}
        for key, file in HAAR_FILES.items():
            clf = cv2.CascadeClassifier(str(base / file))
            if clf.empty():
                self._note_missing("haar", f"cannot load {base / file}", warn=True)
                return
            cascades[key] = clf
        self._haar_face = cascades["face"]
        self._haar_smile = cascades["smile"]
        self._haar_upper = cascades["upper"]
        self._haar_full = cascades["full"]

    def _load_mediapipe(self) -> None:
        try:
            import mediapipe as mp

            solutions = mp.solutions
        except Exception as exc:  # ImportError, or AttributeError: no mp.solutions (>= 0.10.30)
            self._note_missing("mediapipe", f"{type(exc).__name__}: {exc}")
            return
        # Each model separately: only the models inside the wheel are used (pose complexity 1
        # is bundled, complexity 0 would be downloaded), so one failing leaves the others.
        makers = {
            "_mp_face": lambda: solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self._face_min_score
            ),
            "_mp_hands": lambda: solutions.hands.Hands(
                static_image_mode=True,
                max_num_hands=4,
                model_complexity=0,
                min_detection_confidence=self._hand_min_score,
            ),
            "_mp_pose": lambda: solutions.pose.Pose(
                static_image_mode=True,
                model_complexity=1,
                min_detection_confidence=self._pose_min_score,
            ),
        }
        for attr, make in makers.items():
            try:
                setattr(self, attr, make())
            except Exception as exc:
                setattr(self, attr, None)
                self._note_missing(f"mediapipe{attr[3:]}", f"{type(exc).__name__}: {exc}")

    def _load_ocr(self) -> None:
        try:
            from rapidocr import RapidOCR

            self._ocr = RapidOCR(
                params={
                    "Global.log_level": "error",
                    "Global.use_cls": False,
                    "Global.max_side_len": self._ocr_max_side,
                    "EngineConfig.onnxruntime.intra_op_num_threads": self._ocr_threads,
                    "EngineConfig.onnxruntime.inter_op_num_threads": 1,
                }
            )
        except Exception as exc:
            self._ocr = None
            self._note_missing("rapidocr", f"{type(exc).__name__}: {exc}")

    def _note_missing(self, key: str, reason: str, warn: bool = False) -> None:
        """`warn`: a detector the default set relies on (faces), said once as a warning;
        optional ones (mediapipe, OCR) only at info level."""
        self.load_errors[key] = reason
        level = logging.WARNING if warn else logging.INFO
        _log_once(f"perception: {key} detector skipped ({reason})", level)

    @property
    def sees_people(self) -> bool:
        """Whether any face or body detector loaded."""
        return any(
            d is not None for d in (self._haar_face, self._haar_upper, self._mp_face, self._mp_pose)
        )

    def close(self) -> None:
        self._close_mediapipe()
        self._ocr = None
        self._haar_face = self._haar_smile = self._haar_upper = self._haar_full = None
        self._loaded = False

    def _close_mediapipe(self) -> None:
        for attr in ("_mp_face", "_mp_hands", "_mp_pose"):
            obj = getattr(self, attr)
            if obj is not None:
                with contextlib.suppress(Exception):  # closing must never raise
                    obj.close()
            setattr(self, attr, None)

    # ------------------------------------------------------------------ describing

    def describe(
        self,
        image_rgb: np.ndarray,
        prompt: str,
        cancel: threading.Event,
        max_tokens: int = 96,
    ) -> VisionResult:
        start = time.perf_counter()
        if not self._loaded:
            self.load()
        details: dict[str, Any] = {
            "faces": [],
            "bodies": [],
            "hands": [],
            "texts": [],
            "detectors": [],
            "ms": {},
            "cancelled": False,
            "skipped": {},
        }
        image = self._normalise(image_rgb)
        if image is None:
            details["error"] = "no usable image"
            return self._result(f"{SUMMARY_MARKER} no usable image.", details, start)
        h, w = image.shape[:2]
        details["image_size"] = [w, h]
        small, scale = self._resize(image, self._max_side)
        details["scale"] = round(scale, 4)

        steps = [
            ("faces", self._run_faces),
            ("smile", self._run_smiles),
            ("people", self._run_people),
            ("hands", self._run_hands),
            ("text", self._run_text),
        ]
        for step, run in steps:
            if cancel.is_set():
                details["cancelled"] = True
                break
            t0 = time.perf_counter()
            ran = run(image, small, scale, details, cancel)
            if ran:
                details["ms"][step] = round((time.perf_counter() - t0) * 1000, 1)

        text = self._compose(details, prompt, max_tokens)
        return self._result(text, details, start)

    def _result(self, text: str, details: dict[str, Any], start: float) -> VisionResult:
        faces = details.get("faces", [])
        people = len(faces) + len(details.get("bodies", []))
        if people == 0 and details.get("pose_person"):
            people = 1
        return VisionResult(
            text=text,
            kind=self.kind,
            model=self.model_name,
            latency_s=time.perf_counter() - start,
            has_person=people > 0,
            person_count=people,
            smiling=any(f.get("smiling") for f in faces),
            details=details,
        )

    def _normalise(self, image: Any) -> np.ndarray | None:
        try:
            arr = np.asarray(image)
        except Exception:
            return None
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] not in (3, 4):
            return None
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.number):
                return None
            arr = np.nan_to_num(arr.astype(np.float32))
            if arr.size and float(arr.max()) <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)

    def _resize(self, image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
        h, w = image.shape[:2]
        scale = min(1.0, max_side / max(h, w))
        if scale >= 1.0:
            return image, 1.0
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return self._cv2.resize(image, size, interpolation=self._cv2.INTER_AREA), scale

    @staticmethod
    def _to_original(box: list[float], scale: float) -> list[int]:
        return [int(round(v / scale)) for v in box]

    def _gray(self, small: np.ndarray, details: dict[str, Any]) -> np.ndarray:
        gray = details.get("_gray")
        if gray is None:
            gray = self._cv2.equalizeHist(self._cv2.cvtColor(small, self._cv2.COLOR_RGB2GRAY))
            details["_gray"] = gray
        return gray

    # faces ---------------------------------------------------------------------

    def _run_faces(self, image, small, scale, details, cancel) -> bool:
        ran = False
        sh, sw = small.shape[:2]
        if self._mp_face is not None and min(sh, sw) >= 16:
            ran = True
            details["detectors"].append("mediapipe_face")
            out = self._mp_face.process(small)
            for det in out.detections or []:
                score = float(det.score[0]) if det.score else 0.0
                if score < self._face_min_score:
                    continue
                rb = det.location_data.relative_bounding_box
                box = [rb.xmin * sw, rb.ymin * sh, rb.width * sw, rb.height * sh]
                box = [max(0.0, v) for v in box]
                details["faces"].append(
                    {
                        "box": self._to_original(box, scale),
                        "score": round(score, 3),
                        "source": "mediapipe",
                        "_small": [int(v) for v in box],
                    }
                )
            if details["faces"] or self._haar_face is None:
                return ran
        if self._haar_face is not None and min(sh, sw) >= 24:
            ran = True
            details["detectors"].append("haar_face")
            gray = self._gray(small, details)
            rects, neighbours = self._haar_face.detectMultiScale2(
                gray, scaleFactor=1.1, minNeighbors=1, minSize=(24, 24)
            )
            for rect, n in zip(list(rects), list(neighbours), strict=False):
                n = int(n)
                if n < self._face_min_neighbors:
                    continue
                box = [int(v) for v in rect]
                details["faces"].append(
                    {
                        "box": self._to_original(box, scale),
                        # Haar cascades give no probability: the score is the number of
                        # overlapping raw detections merged into this face, squashed to 0..1.
                        "score": round(n / (n + 10.0), 3),
                        "neighbours": n,
                        "source": "haar",
                        "_small": box,
                    }
                )
        return ran

    def _run_smiles(self, image, small, scale, details, cancel) -> bool:
        if self._haar_smile is None or not details["faces"]:
            return False
        cv2 = self._cv2
        details["detectors"].append("haar_smile")
        gray = self._gray(small, details)
        for face in details["faces"]:
            x, y, w, h = face["_small"]
            x0, y0 = max(0, x), max(0, y + h // 2)
            mouth = gray[y0 : max(y0, y + h), x0 : max(x0, x + w)]
            if mouth.shape[0] < 8 or mouth.shape[1] < 16:
                face["smiling"] = False
                continue
            # Normalise the lower half of the face to 160x80 so that neighbour counts compare.
            mouth = cv2.equalizeHist(cv2.resize(mouth, (160, 80), interpolation=cv2.INTER_LINEAR))
            rects, neighbours = self._haar_smile.detectMultiScale2(
                mouth, scaleFactor=1.1, minNeighbors=1, minSize=(40, 20)
            )
            best = max((int(n) for n in neighbours), default=0) if len(rects) else 0
            face["smile_neighbours"] = best
            face["smiling"] = best >= self._smile_min_neighbors
        return True

    # people --------------------------------------------------------------------

    def _run_people(self, image, small, scale, details, cancel) -> bool:
        ran = False
        sh, sw = small.shape[:2]
        if self._mp_pose is not None and min(sh, sw) >= 16:
            ran = True
            details["detectors"].append("mediapipe_pose")
            out = self._mp_pose.process(small)
            landmarks = getattr(out, "pose_landmarks", None)
            if landmarks is not None:
                visible = [lm for lm in landmarks.landmark if lm.visibility >= self._pose_min_score]
                if len(visible) >= 8:
                    xs = [lm.x * sw for lm in visible]
                    ys = [lm.y * sh for lm in visible]
                    box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
                    box = [max(0.0, v) for v in box]
                    details["pose_person"] = True
                    self._add_body(details, box, scale, len(visible) / 33.0, "mediapipe_pose")
        if self._haar_upper is not None and min(sh, sw) >= 32 and not details.get("pose_person"):
            ran = True
            details["detectors"].append("haar_body")
            # Bodies are large: half the detector resolution is enough and about 4x cheaper.
            gray = self._gray(small, details)
            body_scale = scale
            if max(sh, sw) > 320:
                f = 320 / max(sh, sw)
                size = (max(1, round(sw * f)), max(1, round(sh * f)))
                gray = self._cv2.resize(gray, size, interpolation=self._cv2.INTER_AREA)
                body_scale = scale * f
            for clf, min_size, label in (
                (self._haar_upper, (24, 24), "haar_upperbody"),
                (self._haar_full, (14, 28), "haar_fullbody"),
            ):
                if cancel.is_set():
                    break
                rects, neighbours = clf.detectMultiScale2(
                    gray, scaleFactor=1.1, minNeighbors=1, minSize=min_size
                )
                for rect, n in zip(list(rects), list(neighbours), strict=False):
                    n = int(n)
                    if n >= self._body_min_neighbors:
                        self._add_body(
                            details, [int(v) for v in rect], body_scale, n / (n + 10.0), label
                        )
        return ran

    def _add_body(self, details, box_small, scale, score, source) -> None:
        """A body counts as another person only if it overlaps no face and no other body."""
        box = self._to_original(box_small, scale)
        for face in details["faces"]:
            if _overlap(face["box"], box) > 0.5:
                return
        for body in details["bodies"]:
            if _overlap(body["box"], box) > 0.5:
                return
        details["bodies"].append({"box": box, "score": round(float(score), 3), "source": source})

    # hands ---------------------------------------------------------------------

    def _run_hands(self, image, small, scale, details, cancel) -> bool:
        if self._mp_hands is None:
            details["skipped"].setdefault("hands", "no hand detector (mediapipe not available)")
            return False
        sh, sw = small.shape[:2]
        if min(sh, sw) < 16:
            return False
        details["detectors"].append("mediapipe_hands")
        out = self._mp_hands.process(small)
        for lms, hd in zip(
            out.multi_hand_landmarks or [], out.multi_handedness or [], strict=False
        ):
            score = float(hd.classification[0].score)
            if score < self._hand_min_score:
                continue
            xs = [lm.x * sw for lm in lms.landmark]
            ys = [lm.y * sh for lm in lms.landmark]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            details["hands"].append(
                {
                    "box": self._to_original([max(0.0, v) for v in box], scale),
                    "score": round(score, 3),
                    "handedness": hd.classification[0].label,
                }
            )
        return True

    # text ----------------------------------------------------------------------

    def _run_text(self, image, small, scale, details, cancel) -> bool:
        if self._ocr is None:
            return False
        h, w = image.shape[:2]
        if min(h, w) < 16:
            return False
        if not self._ocr_lock.acquire(blocking=False):
            details["skipped"]["text"] = "previous OCR call still running"
            return False
        frame, ocr_scale = self._resize(image, self._ocr_max_side)
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["out"] = self._ocr(frame)
            except Exception as exc:  # a bad frame must not take the back end down
                box["error"] = f"{type(exc).__name__}: {exc}"
            finally:
                self._ocr_lock.release()

        details["detectors"].append("rapidocr")
        worker = threading.Thread(target=work, name="perception-ocr", daemon=True)
        worker.start()
        deadline = time.monotonic() + self._ocr_budget_s
        while worker.is_alive():
            if cancel.is_set():
                details["cancelled"] = True
                details["skipped"]["text"] = "cancelled while OCR ran"
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                details["skipped"]["text"] = f"OCR over its {self._ocr_budget_s:.2f} s budget"
                return True
            worker.join(min(0.02, remaining))
        if "error" in box:
            details["skipped"]["text"] = box["error"]
            return True
        out = box.get("out")
        txts = getattr(out, "txts", None) or ()
        scores = getattr(out, "scores", None) or ()
        boxes = getattr(out, "boxes", None)
        for i, (txt, score) in enumerate(zip(txts, scores, strict=False)):
            txt = str(txt).strip()
            if float(score) < self._ocr_min_score or not re.search(r"\w", txt):
                continue
            entry: dict[str, Any] = {"text": txt, "score": round(float(score), 3)}
            if boxes is not None and i < len(boxes):
                pts = np.asarray(boxes[i], dtype=np.float32).reshape(-1, 2) / ocr_scale
                x0, y0 = pts.min(axis=0)
                x1, y1 = pts.max(axis=0)
                entry["box"] = [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]
            details["texts"].append(entry)
            if len(details["texts"]) >= self._max_texts:
                break
        return True

    # text composition ------------------------------------------------------------

    def _compose(self, details: dict[str, Any], prompt: str, max_tokens: int) -> str:
        details.pop("_gray", None)
        for face in details["faces"]:
            face.pop("_small", None)
        faces = details["faces"]
        bodies = details["bodies"]
        people = len(faces) + len(bodies)
        if people == 0 and details.get("pose_person"):
            people = 1

        parts: dict[str, str] = {}
        if people:
            person = _plural(people, "person") if people == 1 else f"{people} people"
            bits = [person]
            if faces:
                if len(faces) == people:
                    bits.append("facing the camera")
                else:
                    bits.append(f"{len(faces)} facing the camera")
            smiling = sum(1 for f in faces if f.get("smiling"))
            if smiling:
                bits.append("smiling" if smiling == people == 1 else f"{smiling} smiling")
            parts["people"] = ", ".join(bits)
        elif any(d in details["detectors"] for d in ("haar_face", "mediapipe_face")):
            parts["people"] = "no person seen"
        elif not self.sees_people:
            # Not "nothing recognised": nobody looked (no cascades, no mediapipe).
            parts["people"] = "people not checked (no face or body detector installed)"
        if details["hands"]:
            n = len(details["hands"])
            parts["hands"] = f"{_plural(n, 'hand')} visible"
        if details["texts"]:
            quoted = ", ".join(f"'{t['text']}'" for t in details["texts"])
            parts["text"] = f"text visible: {quoted}"

        order = ["people", "hands", "text"]
        words = prompt.lower()
        wants = []
        if re.search(r"\b(text|read|sign|written|write|say|says|label|word)", words):
            wants.append("text")
        if re.search(r"\b(hand|hands|holding|wave|waving|gesture)", words):
            wants.append("hands")
        if re.search(r"\b(smil|face|people|person|who|anyone|somebody|how many|happy)", words):
            wants.append("people")
        order = wants + [k for k in order if k not in wants]

        body = "; ".join(parts[k] for k in order if k in parts)
        if not body:
            body = "nothing recognised" if details["detectors"] else "no detector ran"
        if details["cancelled"]:
            body += " (cancelled before all detectors ran)"
        text = f"{SUMMARY_MARKER} {body}."
        # Keep within roughly max_tokens (about 4 characters a token), never below the marker.
        limit = max(len(SUMMARY_MARKER) + 16, int(max_tokens) * 4)
        if len(text) > limit:
            text = text[: limit - 3].rstrip() + "..."
        return text
