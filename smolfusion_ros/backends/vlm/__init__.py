"""Vision back ends: image + prompt -> text (VLMs) or a factual scene summary (perception)."""

from smolfusion_ros.backends.vlm.base import VisionBackend, VisionBackendError, VisionResult

__all__ = ["VisionBackend", "VisionBackendError", "VisionResult"]
