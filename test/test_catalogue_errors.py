"""Every "model not found" error names the parameter the operator has to set."""

from __future__ import annotations

import pytest

from smolfusion_ros import catalogue
from smolfusion_ros.catalogue import ModelEntry, ModelNotFoundError


def _entry(kind: str, source: dict, **extra) -> ModelEntry:
    return ModelEntry(
        model_id=f"test-{kind}",
        kind=kind,
        backend="any",
        format="gguf",
        description="",
        licence="",
        source=source,
        extra=extra,
    )


MISSING_PACKAGE = {"type": "pypi_file", "module": "no_such_model_package_xyz", "file": "m.gguf"}


@pytest.mark.parametrize(
    ("kind", "parameter"),
    [("llm", "llm.model_path"), ("vlm", "vision.model_path"), ("stt", "stt.model_path")],
)
def test_a_model_that_is_not_installed_names_its_path_parameter(kind, parameter):
    entry = _entry(kind, MISSING_PACKAGE)  # no "install" hint: the parameter is the way out
    with pytest.raises(ModelNotFoundError) as raised:
        catalogue.resolve_model(entry.model_id, catalogue={entry.model_id: entry})
    assert f"set {parameter}" in str(raised.value)
    assert "model path parameter" not in str(raised.value)


def test_an_unknown_id_names_the_parameter_of_the_kind_asked_for():
    for kind, parameter in catalogue.PATH_PARAMETERS.items():
        with pytest.raises(ModelNotFoundError, match=f"or set {parameter} to a file"):
            catalogue.resolve_model("nope", catalogue={}, kind=kind)
    # Kind unknown to the caller: all three, never a vague "the model path parameter".
    with pytest.raises(ModelNotFoundError) as raised:
        catalogue.resolve_model("nope", catalogue={})
    assert "llm.model_path, vision.model_path or stt.model_path" in str(raised.value)


def test_a_bad_path_names_the_parameter_that_holds_it(tmp_path):
    missing = str(tmp_path / "missing.gguf")
    with pytest.raises(ModelNotFoundError, match=r"^llm\.model_path: model file .* does not exist"):
        catalogue.resolve_model("", missing, kind="llm")
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ModelNotFoundError, match=r"^vision\.model_path: .*not a GGUF file"):
        catalogue.resolve_vision_model("", str(not_gguf))
    with pytest.raises(ModelNotFoundError, match=r"^vision\.mmproj_path: model file .* does not"):
        catalogue.resolve_vision_model("", str(not_gguf), mmproj_override=missing)


def test_a_missing_vlm_file_and_projector_name_their_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_HOME", str(tmp_path))
    weights = {"type": "path", "path": "$ROS_HOME/models/vlm.gguf"}
    projector = {"source": {"type": "path", "path": "$ROS_HOME/models/mmproj.gguf"}}
    entry = _entry("vlm", weights, mmproj=projector)
    models = {entry.model_id: entry}
    with pytest.raises(ModelNotFoundError, match="or set vision.model_path$"):
        catalogue.resolve_vision_model(entry.model_id, catalogue=models)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "vlm.gguf").write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(ModelNotFoundError, match="or set vision.mmproj_path$"):
        catalogue.resolve_vision_model(entry.model_id, catalogue=models)


def test_the_shipped_catalogue_names_a_parameter_for_every_model():
    for entry in catalogue.load_catalogue().values():
        assert entry.kind in catalogue.PATH_PARAMETERS, entry.model_id
        assert entry.path_parameter.endswith(".model_path")
