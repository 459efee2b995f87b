"""Profiles: which nodes a deployment runs and which parameter file they read.

The in-process bringup and the ros2 launch file both read config/profiles.yaml through
this module, so what is tested here is what starts on the robot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from smolfusion_ros import paths

KNOWN_NODES = (
    "camera_node",
    "microphone_node",
    "speech_node",
    "fusion_node",
    "tts_node",
    "memory_node",
    "text_input_node",
)


class ProfileError(ValueError):
    """Unknown profile or an invalid profile description."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    parameters_file: Path
    nodes: tuple[str, ...]

    def node_parameters(self, node_name: str) -> dict:
        """The ros__parameters block for one node (nested dicts, as in the YAML)."""
        with open(self.parameters_file, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
        # Keys are "/**/name" so that the file applies in any namespace (one per robot).
        for key in (f"/**/{node_name}", node_name, f"/{node_name}"):
            if key in raw:
                return (raw[key] or {}).get("ros__parameters") or {}
        return {}


def load_profiles(path: Path | None = None) -> dict[str, Profile]:
    path = path or paths.config_path("profiles.yaml")
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    profiles = {}
    for name, spec in raw.items():
        nodes = tuple(spec.get("nodes") or ())
        unknown = [n for n in nodes if n not in KNOWN_NODES]
        if unknown:
            raise ProfileError(f"profile {name}: unknown nodes {unknown}")
        params = path.parent / spec["parameters"]
        profiles[name] = Profile(name, spec.get("description", ""), params, nodes)
    return profiles


def get_profile(name: str, path: Path | None = None) -> Profile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ProfileError(f"unknown profile {name!r} (known: {', '.join(sorted(profiles))})")
    profile = profiles[name]
    if not profile.parameters_file.is_file():
        raise ProfileError(f"profile {name}: parameter file {profile.parameters_file} is missing")
    return profile
