"""The model catalogue: resolves a model id (or an explicit path) to a file on disk.

Nothing is downloaded: files come from installed PyPI packages or a configured path. A model
that cannot be found raises ModelNotFoundError with one message naming what to install or which
parameter to set (llm.model_path, vision.model_path, vision.mmproj_path, stt.model_path).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smolfusion_ros import paths

GGUF_MAGIC = b"GGUF"

# The parameter that points a node at its own model file, by catalogue kind: every "not
# found" message names the one the operator has to set.
PATH_PARAMETERS = {"llm": "llm.model_path", "vlm": "vision.model_path", "stt": "stt.model_path"}
MMPROJ_PARAMETER = "vision.mmproj_path"


def path_parameter(kind: str) -> str:
    """The path parameter for a model kind; all three when the kind is not known."""
    return PATH_PARAMETERS.get(kind) or "llm.model_path, vision.model_path or stt.model_path"


class ModelNotFoundError(RuntimeError):
    """The model file is missing; the message says what to install or which parameter to set."""


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    kind: str
    backend: str
    format: str
    description: str
    licence: str
    source: dict[str, Any]
    size_bytes: int | None = None
    sha256: str | None = None
    context_length: int | None = None
    download: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def path_parameter(self) -> str:
        return path_parameter(self.kind)

    @property
    def install_hint(self) -> str:
        return str(self.source.get("install", f"set {self.path_parameter}"))


_KNOWN_KEYS = {
    "kind",
    "backend",
    "format",
    "description",
    "licence",
    "source",
    "size_bytes",
    "sha256",
    "context_length",
    "download",
}


def load_catalogue(path: Path | None = None) -> dict[str, ModelEntry]:
    path = path or paths.models_dir() / "catalogue.yaml"
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    entries = {}
    for model_id, spec in raw.items():
        entries[model_id] = ModelEntry(
            model_id=model_id,
            kind=spec["kind"],
            backend=spec["backend"],
            format=spec.get("format", ""),
            description=spec.get("description", ""),
            licence=spec.get("licence", "unknown"),
            source=spec.get("source") or {},
            size_bytes=spec.get("size_bytes"),
            sha256=spec.get("sha256"),
            context_length=spec.get("context_length"),
            download=spec.get("download"),
            extra={k: v for k, v in spec.items() if k not in _KNOWN_KEYS},
        )
    return entries


def _module_dir(module: str) -> Path | None:
    # find_spec locates the package without importing it (some weight packages run code on import).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


_join_lock = threading.Lock()


def _join_parts(entry: ModelEntry) -> Path:
    source = entry.source
    target = paths.cache_dir() / "models" / source["joined_name"]
    parts = []
    for n in range(1, int(source["parts"]) + 1):
        module_dir = _module_dir(source["module_pattern"].format(n=n))
        if module_dir is None:
            raise ModelNotFoundError(
                f"model '{entry.model_id}' is not installed (part {n} missing): "
                f"{entry.install_hint}, or set {entry.path_parameter}"
            )
        parts.append(module_dir / source["file_pattern"].format(n=n))
    expected = sum(part.stat().st_size for part in parts)
    with _join_lock:
        if target.is_file() and target.stat().st_size == expected:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".partial.{os.getpid()}")
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as chunk:
                    shutil.copyfileobj(chunk, out, 16 * 1024 * 1024)
        # Atomic rename: a crash mid-join never leaves a truncated model behind.
        os.replace(partial, target)
    return target


def check_model_file(path: Path, fmt: str = "gguf") -> None:
    """Raise ModelNotFoundError unless `path` is a readable file of the expected format."""
    if not path.is_file():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if fmt == "gguf":
        with open(path, "rb") as handle:
            magic = handle.read(4)
        if magic != GGUF_MAGIC:
            raise ModelNotFoundError(f"model file {path} is not a GGUF file (header {magic!r})")


def _check_path(path: Path, fmt: str) -> None:
    # A transformers model is a directory; everything else here is one file.
    if fmt == "transformers":
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model directory {path} has no config.json")
        return
    # Speech models are directories too: a CTranslate2 Whisper model, or a vosk (Kaldi) one.
    if fmt in _DIRECTORY_FORMATS:
        if not any((path / name).exists() for name in _DIRECTORY_FORMATS[fmt]):
            wanted = " or ".join(_DIRECTORY_FORMATS[fmt])
            raise ModelNotFoundError(f"model directory {path} has no {wanted}")
        return
    check_model_file(path, fmt)


_DIRECTORY_FORMATS = {"ctranslate2": ("model.bin",), "vosk": ("am", "conf")}


def _expand(path: str) -> Path:
    """$ROS_HOME means ROS's home even when the variable is unset (~/.ros)."""
    return Path(os.path.expandvars(path.replace("$ROS_HOME", str(paths.ros_home())))).expanduser()


def _lookup(model: str, catalogue: dict | None, kind: str = "") -> ModelEntry:
    catalogue = catalogue if catalogue is not None else load_catalogue()
    entry = catalogue.get(model)
    if entry is None:
        known = ", ".join(sorted(catalogue)) or "none"
        raise ModelNotFoundError(
            f"unknown model id '{model}' (catalogue has: {known}); "
            f"or set {path_parameter(kind)} to a file"
        )
    return entry


def _named(parameter: str, check, *args) -> None:
    """Run a file check for a path the operator set, naming that parameter in the error."""
    try:
        check(*args)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{parameter}: {exc}") from None


def _source_file(entry: ModelEntry, source: dict, fmt: str, parameter: str = "") -> Path:
    parameter = parameter or entry.path_parameter
    kind = source.get("type")
    if kind == "pypi_file":
        module_dir = _module_dir(source["module"])
        if module_dir is None:
            raise ModelNotFoundError(
                f"model '{entry.model_id}' is not installed: {entry.install_hint}, "
                f"or set {parameter}"
            )
        path = module_dir / source["file"]
    elif kind == "pypi_parts":
        path = _join_parts(entry)
    elif kind == "path":
        path = _expand(source["path"])
        if not path.exists():
            where = f" (get it from {entry.download})" if entry.download else ""
            raise ModelNotFoundError(
                f"model '{entry.model_id}' is not at {path}{where}, or set {parameter}"
            )
    else:
        raise ModelNotFoundError(f"model '{entry.model_id}' has unsupported source type {kind!r}")
    _check_path(path, fmt)
    return path


def resolve_model(
    model: str, path_override: str = "", catalogue: dict | None = None, kind: str = ""
) -> Path:
    """Return the file for `model` (a catalogue id), or `path_override` when it is set.

    `kind` (llm, vlm, stt) names the path parameter in errors before the catalogue entry is
    known (an unknown id, a bad path); a found entry's own kind wins.
    """
    if path_override:
        path = Path(path_override).expanduser()
        fmt = "gguf" if path.suffix == ".gguf" else ""
        if kind in PATH_PARAMETERS:
            _named(PATH_PARAMETERS[kind], check_model_file, path, fmt)
        else:
            check_model_file(path, fmt)
        return path
    entry = _lookup(model, catalogue, kind)
    return _source_file(entry, entry.source, entry.format)


def resolve_vision_model(
    model: str, path_override: str = "", mmproj_override: str = "", catalogue: dict | None = None
) -> tuple[Path, Path | None]:
    """(weights, projector) for a VLM: a GGUF file + its mmproj, or a transformers directory.

    Explicit paths win over the catalogue entry; the projector is None when there is none.
    """
    mmproj = Path(mmproj_override).expanduser() if mmproj_override else None
    if mmproj is not None:
        _named(MMPROJ_PARAMETER, check_model_file, mmproj, "gguf")
    if path_override:
        path = Path(path_override).expanduser()
        fmt = "transformers" if path.is_dir() else "gguf"
        _named(PATH_PARAMETERS["vlm"], _check_path, path, fmt)
        return path, mmproj
    entry = _lookup(model, catalogue, "vlm")
    path = _source_file(entry, entry.source, entry.format)
    projector = entry.extra.get("mmproj")
    if mmproj is None and projector:
        mmproj = _source_file(entry, projector["source"], "gguf", MMPROJ_PARAMETER)
    return path, mmproj
