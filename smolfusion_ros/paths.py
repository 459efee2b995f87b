"""Where the package's data files (config/, models/, launch/) are, installed or in a checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_NAME = "smolfusion_ros"


def share_dir() -> Path:
    """Return the package's share directory.

    Order: ament index (a colcon workspace or /opt/ros), the running interpreter's prefix
    (the pip/venv install made by scripts/bootstrap.sh), then the source checkout.
    """
    override = os.environ.get("SMOLFUSION_SHARE_DIR")
    if override:
        return Path(override)
    try:
        from ament_index_python.packages import (
            PackageNotFoundError,
            get_package_share_directory,
        )

        try:
            return Path(get_package_share_directory(PACKAGE_NAME))
        except (PackageNotFoundError, OSError):
            pass  # OSError: AMENT_PREFIX_PATH unset, as in a plain venv
    except ImportError:
        pass
    prefix_share = Path(sys.prefix) / "share" / PACKAGE_NAME
    if (prefix_share / "config").is_dir():
        return prefix_share
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "config").is_dir() and (checkout / "package.xml").is_file():
        return checkout
    return prefix_share


def config_path(name: str) -> Path:
    """A file in config/ (absolute paths are returned unchanged)."""
    path = Path(name)
    return path if path.is_absolute() else share_dir() / "config" / name


def models_dir() -> Path:
    return share_dir() / "models"


def ros_home() -> Path:
    """ROS_HOME, or ~/.ros, as ROS itself resolves it."""
    home = os.environ.get("ROS_HOME")
    return Path(home) if home else Path.home() / ".ros"


def default_memory_database() -> Path:
    """The SQLite memory shared by fusion_node and memory_node unless configured otherwise."""
    return ros_home() / "smolfusion_ros" / "memory.db"


def cache_dir() -> Path:
    """Where derived files (e.g. a GGUF joined from parts) are kept."""
    base = os.environ.get("SMOLFUSION_CACHE_DIR")
    return Path(base) if base else ros_home() / "smolfusion_ros"
