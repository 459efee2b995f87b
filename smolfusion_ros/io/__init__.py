"""Device and file I/O without ROS (numpy, OpenCV, sounddevice).

image_convert and frame_gate (exported here), frame_source (camera capture from a device,
video file or image folder), audio (channels, resampling, levels, WAV), capture (microphone
input from a sound card or WAV file), audio_output (speech to a sound card, WAV folder or
nowhere), overlay and heap. Import the modules directly for everything not listed below.
"""

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
