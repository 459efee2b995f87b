"""Profiles: which nodes a deployment runs, which parameter file they read, which are required.

The in-process bringup and the ros2 launch file both read config/profiles.yaml through
this module, so what is tested here is what starts on the robot.

A user's parameter file (launch argument `params_file`) is layered over the profile's file,
never instead of it: both are passed to every node, the profile's first, so the user's file
overrides only the parameters it sets (rcl applies --params-file arguments in order).
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
    "knowledge_node",
    "gateway_node",
)


# A robot must not look alive without these: the launch shuts down when one of them exits.
DEFAULT_REQUIRED = ("fusion_node",)


# Managed (lifecycle) nodes: they configure and activate themselves when their `autostart`
# parameter is true (the profiles' files set it; nodes/managed.py), in the bringup and under
# ros2 launch alike; launch argument autostart:=false leaves them unconfigured for a lifecycle
# manager or behaviour tree.
MANAGED_NODES = (
    "camera_node",
    "microphone_node",
    "speech_node",
    "fusion_node",
    "tts_node",
    "memory_node",
)

# Launch arguments that set one node's parameter over every file (the model servers of a
# fleet robot, each model's path): argument -> (node, parameter). Empty = the files' value.
ARGUMENT_PARAMETERS = {
    "llm_url": ("fusion_node", "llm.base_url"),
    "vlm_url": ("fusion_node", "vision.base_url"),
    "llm_model_path": ("fusion_node", "llm.model_path"),
    "vision_model_path": ("fusion_node", "vision.model_path"),
    "vision_mmproj_path": ("fusion_node", "vision.mmproj_path"),
    "stt_model_path": ("speech_node", "stt.model_path"),
}
URL_ARGUMENTS = ("llm_url", "vlm_url")
# Launch argument for every managed node's autostart parameter ("" = the files' value).
AUTOSTART_ARGUMENT = "autostart"


def argument_overrides(node_name: str, arguments: dict[str, str]) -> dict[str, object]:
    """The parameters `arguments` (launch argument -> value) set on `node_name`."""
    overrides: dict[str, object] = {}
    for argument, (node, parameter) in ARGUMENT_PARAMETERS.items():
        value = (arguments.get(argument) or "").strip()
        if value and node == node_name:
            if argument in URL_ARGUMENTS and not value.startswith(("http://", "https://")):
                raise ProfileError(f"{argument}:={value} must start with http:// or https://")
            overrides[parameter] = value
    autostart = (arguments.get(AUTOSTART_ARGUMENT) or "").strip().lower()
    if autostart and node_name in MANAGED_NODES:
        if autostart not in ("true", "false"):
            raise ProfileError(f"{AUTOSTART_ARGUMENT}:={autostart} must be true or false")
        overrides["autostart"] = autostart == "true"
    return overrides


class ProfileError(ValueError):
    """Unknown profile or an invalid profile description."""


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    parameters_file: Path
    nodes: tuple[str, ...]
    required: tuple[str, ...] = DEFAULT_REQUIRED

    def parameter_files(self, user_file: str | Path | None = None) -> list[Path]:
        """The files every node reads, in order: the profile's, then the user's over it."""
        files = [self.parameters_file]
        if user_file:
            path = Path(user_file).expanduser()
            if not path.is_file():
                raise ProfileError(f"params_file {path} does not exist")
            files.append(path)
        return files

    def node_parameters(self, node_name: str, user_file: str | Path | None = None) -> dict:
        """The ros__parameters of one node (nested dicts, as in the YAML), with the user's
        file merged over the profile's exactly as the node sees them."""
        merged: dict = {}
        for path in self.parameter_files(user_file):
            merged = _merge(merged, _node_block(path, node_name))
        return merged


def _node_block(path: Path, node_name: str) -> dict:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    # Keys are "/**/name" so that the file applies in any namespace (one per robot); a block
    # for all nodes ("/**") applies too, under the node's own block.
    merged: dict = {}
    for key in ("/**", f"/**/{node_name}", node_name, f"/{node_name}"):
        if isinstance(raw.get(key), dict):
            merged = _merge(merged, raw[key].get("ros__parameters") or {})
    return merged


def _merge(base: dict, over: dict) -> dict:
    """`over` wins parameter by parameter; nested groups (llm:, vision:) merge, not replace."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


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
        required = tuple(spec.get("required", DEFAULT_REQUIRED))
        if set(required) - set(nodes):
            raise ProfileError(
                f"profile {name}: required {sorted(set(required) - set(nodes))}"
                " are not among its nodes"
            )
        params = path.parent / spec["parameters"]
        profiles[name] = Profile(name, spec.get("description", ""), params, nodes, required)
    return profiles


def get_profile(name: str, path: Path | None = None) -> Profile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ProfileError(f"unknown profile {name!r} (known: {', '.join(sorted(profiles))})")
    profile = profiles[name]
    if not profile.parameters_file.is_file():
        raise ProfileError(f"profile {name}: parameter file {profile.parameters_file} is missing")
    return profile
