"""The robot launch path: params_file layered over the profile, required nodes, real rcl layering.

ROS 2's `launch`/`launch_ros` are not installable here (PyPI's `launch` is another project),
so the launch file itself runs against small stand-ins that record what it asks for (named
so below). What those stand-ins cannot show, rcl applying two --params-file arguments in
order, is checked on a real node process: that is exactly what launch_ros passes for
`parameters=[profile_file, user_file]`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import types

import pytest
import yaml
from conftest import REPO, unique_namespace, wait_for

from smolfusion_ros.core.profile import ProfileError, get_profile, load_profiles

LAUNCH_FILE = REPO / "launch" / "smolfusion.launch.py"


class _Recorded:
    """Stand-in for a launch action or substitution: keeps its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


class _LaunchConfiguration(_Recorded):
    def perform(self, context) -> str:
        return context[self.args[0]]


def _stand_in_launch_modules() -> dict[str, types.ModuleType]:
    modules = {}
    for name in (
        "launch",
        "launch.actions",
        "launch.substitutions",
        "launch_ros",
        "launch_ros.actions",
    ):
        modules[name] = types.ModuleType(name)
    modules["launch"].LaunchDescription = _Recorded
    for action in ("DeclareLaunchArgument", "OpaqueFunction", "Shutdown"):
        setattr(modules["launch.actions"], action, type(action, (_Recorded,), {}))
    modules["launch.substitutions"].LaunchConfiguration = _LaunchConfiguration
    modules["launch_ros.actions"].Node = type("Node", (_Recorded,), {})
    return modules


def _run_launch_file(monkeypatch, **arguments) -> list:
    """Import the launch file with the stand-ins and evaluate it for these launch arguments."""
    for name, module in _stand_in_launch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("smolfusion_launch_under_test", LAUNCH_FILE)
    launch_file = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_file)
    description = launch_file.generate_launch_description()
    declared = {
        a.args[0]: a.kwargs["default_value"]
        for a in description.args[0]
        if type(a).__name__ == "DeclareLaunchArgument"
    }
    assert set(declared) == {
        "profile",
        "namespace",
        "params_file",
        "llm_url",
        "vlm_url",
        "llm_model_path",
        "vision_model_path",
        "vision_mmproj_path",
        "stt_model_path",
        "autostart",
    }
    (opaque,) = [a for a in description.args[0] if type(a).__name__ == "OpaqueFunction"]
    return opaque.kwargs["function"](declared | arguments)


def test_stand_in_launch_layers_params_file_over_the_profile_and_requires_fusion_node(
    monkeypatch, tmp_path
):
    user = tmp_path / "robot1.yaml"
    user.write_text("/**/fusion_node:\n  ros__parameters:\n    llm:\n      model_path: /m/x.gguf\n")
    nodes = _run_launch_file(
        monkeypatch, profile="jetson_gguf", namespace="robot1", params_file=str(user)
    )
    profile = get_profile("jetson_gguf")
    assert [n.kwargs["executable"] for n in nodes] == list(profile.nodes)
    for node in nodes:
        # Both files, the profile's first: the user's overrides only what it sets.
        assert node.kwargs["parameters"] == [str(profile.parameters_file), str(user)]
        assert node.kwargs["namespace"] == "robot1"
    required = {n.kwargs["executable"]: n.kwargs.get("on_exit") for n in nodes}
    assert type(required.pop("fusion_node")).__name__ == "Shutdown"
    assert set(required.values()) == {None}, "only required nodes end the launch"


def test_stand_in_launch_model_path_arguments_set_each_models_parameter(monkeypatch):
    nodes = {
        n.kwargs["executable"]: n.kwargs["parameters"]
        for n in _run_launch_file(
            monkeypatch,
            profile="jetson_gguf",
            llm_model_path="/models/llm.gguf",
            vision_mmproj_path="/models/mmproj.gguf",
            stt_model_path="/models/whisper",
        )
    }
    profile_file = str(get_profile("jetson_gguf").parameters_file)
    assert nodes["fusion_node"] == [
        profile_file,
        {"llm.model_path": "/models/llm.gguf", "vision.mmproj_path": "/models/mmproj.gguf"},
    ]
    assert nodes["speech_node"] == [profile_file, {"stt.model_path": "/models/whisper"}]
    assert nodes["memory_node"] == [profile_file]


def test_managed_nodes_autostart_from_the_profile_and_the_launch_argument_can_stop_it(
    monkeypatch,
):
    """Lifecycle nodes reach active through their autostart parameter (set in every profile;
    on Humble too, where launch_ros' LifecycleNode has no autostart); autostart:=false leaves
    them unconfigured for a lifecycle manager."""
    from smolfusion_ros.core.profile import MANAGED_NODES

    for profile in load_profiles().values():
        for name in MANAGED_NODES:
            if name in profile.nodes:
                assert profile.node_parameters(name).get("autostart") is True, (profile, name)
    default = _run_launch_file(monkeypatch, profile="cpu_demo")
    assert all(len(n.kwargs["parameters"]) == 1 for n in default), "the files decide by default"
    nodes = _run_launch_file(monkeypatch, profile="cpu_demo", autostart="false")
    for node in nodes:
        overrides = [p for p in node.kwargs["parameters"] if isinstance(p, dict)]
        if node.kwargs["executable"] in MANAGED_NODES:
            assert overrides == [{"autostart": False}], node.kwargs
        else:
            assert overrides == [], node.kwargs
    with pytest.raises(ProfileError, match="autostart:=maybe must be true or false"):
        _run_launch_file(monkeypatch, profile="cpu_demo", autostart="maybe")


def test_stand_in_launch_without_params_file_uses_the_profile_alone(monkeypatch, tmp_path):
    nodes = _run_launch_file(monkeypatch, profile="cpu_demo")
    assert {tuple(n.kwargs["parameters"]) for n in nodes} == {
        (str(get_profile("cpu_demo").parameters_file),)
    }
    with pytest.raises(ProfileError, match="params_file .*typo.yaml does not exist"):
        _run_launch_file(monkeypatch, params_file=str(tmp_path / "typo.yaml"))


def test_a_user_file_that_sets_only_the_model_path_keeps_the_jetson_settings(tmp_path):
    profile = get_profile("jetson_gguf")
    before = profile.node_parameters("fusion_node")
    user = tmp_path / "robot1.yaml"
    user.write_text(
        yaml.safe_dump({"/**/fusion_node": {"ros__parameters": {"llm": {"model_path": "/m.gguf"}}}})
    )
    after = profile.node_parameters("fusion_node", user)
    assert after["llm"]["model_path"] == "/m.gguf"
    assert after["llm"]["n_gpu_layers"] == before["llm"]["n_gpu_layers"] != 0
    assert {k: v for k, v in after["llm"].items() if k != "model_path"} == {
        k: v for k, v in before["llm"].items() if k != "model_path"
    }
    assert after["vision"] == before["vision"]


def test_every_profile_requires_fusion_node():
    for profile in load_profiles().values():
        assert profile.required == ("fusion_node",), profile.name


@pytest.mark.ros
def test_rcl_applies_two_params_files_in_order(ros_node, tmp_path):
    """What launch_ros does with parameters=[profile_file, user_file], on a real node."""
    from rcl_interfaces.srv import GetParameters

    profile_file = tmp_path / "profile.yaml"
    profile_file.write_text(
        yaml.safe_dump(
            {
                "/**/tts_node": {
                    "ros__parameters": {"output": "none", "rate_wpm": 123, "voice": "en-gb"}
                }
            }
        )
    )
    user_file = tmp_path / "user.yaml"
    user_file.write_text(yaml.safe_dump({"/**/tts_node": {"ros__parameters": {"rate_wpm": 201}}}))
    namespace = unique_namespace("layer")
    args = [sys.executable, "-m", "smolfusion_ros.nodes.tts_node", "--ros-args"]
    args += ["-r", f"__ns:={namespace}"]
    args += ["--params-file", str(profile_file), "--params-file", str(user_file)]
    env = os.environ | {"ROS_HOME": str(tmp_path / "ros_home")}
    process = subprocess.Popen(
        args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = ros_node.create_client(GetParameters, f"{namespace}/tts_node/get_parameters")
        if not client.wait_for_service(timeout_sec=20):
            process.kill()
            raise AssertionError(process.communicate(timeout=10)[0].decode(errors="replace"))
        future = client.call_async(GetParameters.Request(names=["rate_wpm", "voice", "output"]))
        assert wait_for(future.done, 10)
        rate, voice, output = future.result().values
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    assert rate.integer_value == 201  # the user's file wins where it sets something
    assert voice.string_value == "en-gb" and output.string_value == "none"  # the rest stays
