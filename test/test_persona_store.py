"""Operator personas in a real SQLite file beside config/personas.yaml: validation (the same
rules as the YAML loader), no shadowing of YAML personas, survival across a restart."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from smolfusion_ros.core.personas import Persona, PersonaError, load_personas
from smolfusion_ros.dialogue.persona_store import PersonaStore

PERSONAS = Path(__file__).resolve().parent.parent / "config" / "personas.yaml"


@pytest.fixture
def base():
    return load_personas(PERSONAS)


@pytest.fixture
def store(tmp_path, base):
    store = PersonaStore(tmp_path / "personas.db", base)
    yield store
    store.close()


def _create_tutor(store, **overrides):
    spec = {
        "name": "Tutor",
        "system_prompt": "You are a patient maths tutor robot.",
        "traits": {"friendliness": 5, "knowledge": 4, "empathy": 5, "formality": 1},
        "language": "en",
    }
    spec.update(overrides)
    return store.create("tutor", **spec)


def test_created_personas_are_the_same_persona_objects(store, base):
    record = _create_tutor(store)
    assert record.source == "operator" and record.language == "en"
    assert isinstance(record.persona, Persona)
    assert record.persona.render_system_prompt() == (
        "You are a patient maths tutor robot. Be very warm, cheerful and encouraging. "
        "Give accurate details when they help. Be very attentive to the person's feelings. "
        "Speak very casually."
    )
    assert store.get("tutor").persona == record.persona
    ids = [r.persona_id for r in store.list()]
    assert ids == base.ids() + ["tutor"]
    assert [r.source for r in store.list()][-1] == "operator"
    book = store.book()
    assert book.get("tutor") == record.persona and book.default_id == base.default_id
    assert store.get("").persona_id == base.default_id
    assert store.get("smol").source == "config" and store.get("nobody") is None
    assert store.language_of("tutor") == "en" and store.language_of("nobody") == "en"


def test_yaml_personas_cannot_be_shadowed_changed_or_deleted(store):
    with pytest.raises(PersonaError, match="config/personas.yaml"):
        store.create("smol", name="Fake", system_prompt="I am not Smol.")
    with pytest.raises(PersonaError, match="cannot be deleted"):
        store.delete("guide")
    assert store.get("smol").persona.name == "Smol"


def test_duplicates_need_replace_and_delete_works(store):
    first = _create_tutor(store)
    with pytest.raises(PersonaError, match="already exists"):
        _create_tutor(store)
    replaced = _create_tutor(store, name="Maths Tutor", replace=True)
    assert replaced.persona.name == "Maths Tutor" and replaced.created == first.created
    assert store.delete("tutor") is True
    assert store.delete("tutor") is False
    assert store.get("tutor") is None


BAD_SPECS = [
    ({"traits": {"humour": 3}}, "unknown trait"),
    ({"traits": {"empathy": 6}}, "empathy must be 1..5"),
    ({"traits": {"empathy": 0}}, "empathy must be 1..5"),
    ({"traits": {"formality": "high"}}, "formality must be 1..5"),
    ({"traits": {"formality": 2.5}}, "formality must be 1..5"),
    ({"system_prompt": "   "}, "system_prompt is empty"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_SPECS)
def test_validation_matches_the_yaml_loader(tmp_path, store, overrides, message):
    """The same bad persona is refused by the store and by core/personas.py's loader."""
    with pytest.raises(PersonaError, match=message):
        _create_tutor(store, **overrides)
    spec = {"name": "Tutor", "system_prompt": "You are a tutor.", "traits": {}}
    spec.update({k: v for k, v in overrides.items() if k in spec})
    path = tmp_path / "personas.yaml"
    path.write_text(yaml.safe_dump({"personas": {"tutor": spec}}), encoding="utf-8")
    with pytest.raises(PersonaError, match=message):
        load_personas(path)
    assert store.get("tutor") is None


@pytest.mark.parametrize(
    ("persona_id", "overrides", "message"),
    [
        ("bad id", {}, "invalid persona id"),
        ("", {}, "invalid persona id"),
        ("x" * 41, {}, "invalid persona id"),
        ("-dash", {}, "invalid persona id"),
        ("tutor", {"language": "English"}, "language must be a code"),
        ("tutor", {"system_prompt": "x" * 5000}, "limit is 4000"),
        ("tutor", {"name": "n" * 100}, "name must be"),
        ("tutor", {"traits": {"empathy": True}}, "empathy must be 1..5"),
        ("tutor", {"traits": ["friendliness"]}, "traits must map"),
    ],
)
def test_bad_operator_personas_are_refused(store, persona_id, overrides, message):
    spec = {"name": "Tutor", "system_prompt": "You are a tutor.", "language": "en"}
    spec.update(overrides)
    with pytest.raises(PersonaError, match=message):
        store.create(persona_id, **spec)
    assert [r.source for r in store.list()].count("operator") == 0


def test_the_store_is_bounded(tmp_path, base):
    store = PersonaStore(tmp_path / "p.db", base, max_personas=2)
    store.create("a1", name="A", system_prompt="A.")
    store.create("a2", name="B", system_prompt="B.")
    with pytest.raises(PersonaError, match="the limit"):
        store.create("a3", name="C", system_prompt="C.")
    store.create("a2", name="B2", system_prompt="B.", replace=True)  # replacing is fine
    store.close()


def test_personas_survive_a_restart_of_another_process(tmp_path, base):
    """Created in one process, read back by a fresh process from the same file."""
    path = tmp_path / "personas.db"
    script = (
        "import sys\n"
        "from smolfusion_ros.core.personas import load_personas\n"
        "from smolfusion_ros.dialogue.persona_store import PersonaStore\n"
        f"store = PersonaStore({str(path)!r}, load_personas({str(PERSONAS)!r}))\n"
        "store.create('nurse', name='Nurse', system_prompt='You are a hospital robot.',"
        " traits={'empathy': 5, 'formality': 4}, language='ko')\n"
    )
    subprocess.run([sys.executable, "-P", "-c", script], check=True, timeout=60)
    reopened = PersonaStore(path, base)
    record = reopened.get("nurse")
    assert record is not None and record.language == "ko"
    assert record.persona.traits == {"empathy": 5, "formality": 4}
    assert "Be very attentive to the person's feelings." in record.persona.render_system_prompt()
    reopened.close()


def test_a_yaml_edit_that_collides_is_reported_not_silently_preferred(tmp_path, base):
    path = tmp_path / "personas.db"
    store = PersonaStore(path, base)
    store.create("nurse", name="Nurse", system_prompt="You are a hospital robot.")
    store.close()
    personas_yaml = yaml.safe_load(PERSONAS.read_text(encoding="utf-8"))
    personas_yaml["personas"]["nurse"] = {"name": "YAML nurse", "system_prompt": "From YAML."}
    edited = tmp_path / "personas.yaml"
    edited.write_text(yaml.safe_dump(personas_yaml), encoding="utf-8")
    store = PersonaStore(path, load_personas(edited))
    assert store.get("nurse").source == "config" and store.get("nurse").persona.name == "YAML nurse"
    assert [r.persona_id for r in store.list()].count("nurse") == 1
    assert len(store.conflicts) == 1 and "'nurse'" in store.conflicts[0]
    store.close()


def test_concurrent_creates_from_two_threads(store):
    errors = []

    def create(prefix):
        try:
            for i in range(20):
                store.create(f"{prefix}{i}", name=f"{prefix} {i}", system_prompt="Hello.")
        except Exception as exc:  # noqa: BLE001 - any failure fails the test
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(p,)) for p in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert sum(r.source == "operator" for r in store.list()) == 40
