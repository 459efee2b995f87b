"""Middleware settings every smolfusion_ros process applies before rclpy.init()."""

from __future__ import annotations

import os

from smolfusion_ros import paths

# Fast DDS releases that know <builtinTransports sockets_size=...> (2.13 and later).
_DISTROS_WITHOUT_SUPPORT = {"humble", "iron"}


def use_large_frame_transport() -> None:
    """Point Fast DDS at config/fastdds.xml (8 MB shared-memory segments for camera frames),
    unless the user chose a profile, another middleware, or a distro too old for it."""
    if os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or os.environ.get(
        "FASTRTPS_DEFAULT_PROFILES_FILE"
    ):
        return
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return
    if os.environ.get("ROS_DISTRO", "") in _DISTROS_WITHOUT_SUPPORT:
        return
    profile = paths.config_path("fastdds.xml")
    if profile.is_file():
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
        use_memory_policy_from_profile()


def use_memory_policy_from_profile() -> None:
    """Let rmw_fastrtps take the history memory policy (DYNAMIC) from config/fastdds.xml; it
    ignores the file's policy otherwise and keeps the largest message's buffer for good."""
    os.environ.setdefault("RMW_FASTRTPS_USE_QOS_FROM_XML", "1")
