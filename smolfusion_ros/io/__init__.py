"""Sensor input helpers without ROS: image conversion and frame gating (numpy + OpenCV)."""

from smolfusion_ros.io.frame_gate import FrameGate, Verdict, frame_difference, thumbnail
from smolfusion_ros.io.image_convert import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    check_image_fields,
    downscale_to_fit,
    image_to_rgb,
    is_supported,
    rgb_to_image_fields,
    target_size,
)

__all__ = [
    "SUPPORTED_ENCODINGS",
    "FrameGate",
    "ImageConversionError",
    "Verdict",
    "check_image_fields",
    "downscale_to_fit",
    "frame_difference",
    "image_to_rgb",
    "is_supported",
    "rgb_to_image_fields",
    "target_size",
    "thumbnail",
]
