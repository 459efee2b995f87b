"""Operator personas: created at run time, stored in SQLite beside memory, merged with YAML.

config/personas.yaml stays the read-only base: its personas cannot be changed or deleted here,
and an operator persona can never take a YAML persona's id (creating one is refused with a
clear error; one that collides after the YAML was edited is left out and reported in
`conflicts`, never silently preferred). Operator personas are validated with the same rules as
the YAML ones (core/personas.py: four traits, each an integer 1..5, a non-empty system prompt)
and come back as the same `Persona` objects, so the chat engine renders both identically.

Same SQLite conventions as the memory store: WAL, synchronous=FULL, BEGIN IMMEDIATE, one
connection serialised by a lock. Every read goes to the database, so a persona created by one
process (the gateway) is seen at once by another (fusion_node).
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from smolfusion_ros.core.personas import TRAIT_NAMES, Persona, PersonaBook, PersonaError
from smolfusion_ros.memory.sqlite import immediate_transaction, open_database
from smolfusion_ros.paths import ros_home

PERSONA_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,39}$")
LANGUAGE_PATTERN = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?$")
SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS personas (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " language TEXT NOT NULL, system_prompt TEXT NOT NULL, traits TEXT NOT NULL,"
    " created FLOAT, updated FLOAT)",
)


def default_persona_database() -> Path:
    return ros_home() / "smolfusion_ros" / "personas.db"


def validate_persona_id(persona_id: str) -> str:
    """Return the id or raise PersonaError (1-40 letters, digits, '_' or '-')."""
    persona_id = (persona_id or "").strip()
    if not PERSONA_ID_PATTERN.match(persona_id):
        shown = persona_id if len(persona_id) <= 40 else persona_id[:40] + "..."
        raise PersonaError(
            f"invalid persona id {shown!r}: use 1-40 letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return persona_id


def validate_traits(traits: Mapping[str, object], where: str) -> dict[str, int]:
    """The rules of core/personas.py: known trait names, integers 1..5 (missing = 3)."""
    if not isinstance(traits, Mapping):
        raise PersonaError(f"{where}: traits must map trait names to 1..5")
    checked = {}
    for trait, level in traits.items():
        if trait not in TRAIT_NAMES:
            raise PersonaError(
                f"{where}: unknown trait {trait!r} (known: {', '.join(TRAIT_NAMES)})"
            )
        # bool is an int in Python; True is not a trait level.
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 5:
            raise PersonaError(f"{where}: {trait} must be 1..5")
        checked[trait] = level
    return checked


@dataclass(frozen=True)
class PersonaRecord:
    persona: Persona
    language: str
    source: str  # "config" (read-only YAML) or "operator" (this store)
    created: float = 0.0

    @property
    def persona_id(self) -> str:
        return self.persona.persona_id


class PersonaStore:
    """YAML personas (read-only) plus operator personas in SQLite, under one set of ids."""

    def __init__(
        self,
        path: str | Path | None,
        base: PersonaBook,
        *,
        base_languages: Mapping[str, str] | None = None,
        default_language: str = "en",
        max_personas: int = 200,
        max_prompt_chars: int = 4000,
        max_name_chars: int = 64,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path).expanduser() if path else default_persona_database()
        self.base = base
        self.base_languages = dict(base_languages or {})
        self.default_language = default_language
        self.max_personas = max_personas
        self.max_prompt_chars = max_prompt_chars
        self.max_name_chars = max_name_chars
        self._lock = threading.Lock()
        try:
            self.db = open_database(self.path, synchronous)
            with self._lock, immediate_transaction(self.db):
                for statement in _SCHEMA:
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise PersonaError(f"cannot open persona database {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self.db.conn.close()

    # ---------------------------------------------------------------- writes
    def create(
        self,
        persona_id: str,
        *,
        name: str,
        system_prompt: str,
        traits: Mapping[str, object] | None = None,
        language: str = "",
        replace: bool = False,
    ) -> PersonaRecord:
        """Validate and store an operator persona; returns it. Raises PersonaError with the
        reason (bad id, a YAML persona's id, exists and not `replace`, bad trait, empty or
        over-long prompt, bad language code, the store full)."""
        persona_id = validate_persona_id(persona_id)
        where = f"persona {persona_id}"
        if persona_id in self.base.personas:
            raise PersonaError(
                f"{where}: that id belongs to a persona of config/personas.yaml, which is "
                "read-only here; choose another id"
            )
        checked = validate_traits(traits or {}, where)
        name = " ".join(str(name or persona_id).split())
        if not name or len(name) > self.max_name_chars:
            raise PersonaError(f"{where}: name must be 1-{self.max_name_chars} characters")
        prompt = str(system_prompt or "")
        if not prompt.strip():
            raise PersonaError(f"{where}: system_prompt is empty")
        if len(prompt) > self.max_prompt_chars:
            raise PersonaError(
                f"{where}: system_prompt is {len(prompt)} characters; the limit is "
                f"{self.max_prompt_chars}"
            )
        if "\x00" in prompt or "\x00" in name:
            raise PersonaError(f"{where}: NUL character in name or system_prompt")
        language = (language or self.default_language).strip()
        if not LANGUAGE_PATTERN.match(language):
            raise PersonaError(f"{where}: language must be a code like 'en', 'de' or 'ko'")
        now = time.time()
        row = {
            "id": persona_id,
            "name": name,
            "language": language,
            "system_prompt": prompt.strip(),
            "traits": json.dumps(checked, sort_keys=True),
            "created": now,
            "updated": now,
        }
        with self._lock:
            try:
                with immediate_transaction(self.db):
                    existing = list(
                        self.db.query("SELECT created FROM personas WHERE id = ?", [persona_id])
                    )
                    if existing and not replace:
                        raise PersonaError(f"{where} already exists (delete it or replace it)")
                    if existing:
                        row["created"] = existing[0]["created"]
                    else:
                        count = next(iter(self.db.query("SELECT COUNT(*) AS n FROM personas")))
                        if count["n"] >= self.max_personas:
                            raise PersonaError(
                                f"{self.max_personas} operator personas stored, the limit; "
                                "delete some first"
                            )
                    self.db["personas"].upsert(row, pk="id")
            except sqlite3.Error as exc:
                raise PersonaError(f"cannot write to {self.path}: {exc}") from None
        return self._record(row)

    def delete(self, persona_id: str) -> bool:
        """Delete an operator persona; False if there was none. YAML personas: PersonaError."""
        persona_id = validate_persona_id(persona_id)
        if persona_id in self.base.personas:
            raise PersonaError(
                f"persona {persona_id} is defined in config/personas.yaml and cannot be deleted"
            )
        with self._lock, immediate_transaction(self.db):
            return self.db.execute("DELETE FROM personas WHERE id = ?", [persona_id]).rowcount > 0

    # ----------------------------------------------------------------- reads
    def get(self, persona_id: str) -> PersonaRecord | None:
        """A persona by id (YAML first), or None. '' is the YAML default persona."""
        persona_id = (persona_id or "").strip() or self.base.default_id
        base = self.base.personas.get(persona_id)
        if base is not None:
            return self._base_record(base)
        if not PERSONA_ID_PATTERN.match(persona_id):
            return None
        with self._lock:
            rows = list(self.db.query("SELECT * FROM personas WHERE id = ?", [persona_id]))
        return self._record(rows[0]) if rows else None

    def language_of(self, persona_id: str) -> str:
        """The persona's language code (the default language for an unknown persona); the
        chat engine passes it to RuleBook.match."""
        record = self.get(persona_id)
        return record.language if record else self.default_language

    def list(self) -> list[PersonaRecord]:
        """YAML personas, then operator personas, each group sorted by id."""
        records = [self._base_record(self.base.personas[i]) for i in self.base.ids()]
        return records + [self._record(r) for r in self._operator_rows()]

    @property
    def conflicts(self) -> list[str]:
        """Messages about operator personas hidden because the YAML now has their id."""
        with self._lock:
            rows = list(self.db.query("SELECT id FROM personas ORDER BY id"))
        return [
            f"operator persona {r['id']!r} in {self.path} is hidden: config/personas.yaml now "
            "defines that id (delete the operator persona or rename the YAML one)"
            for r in rows
            if r["id"] in self.base.personas
        ]

    def book(self) -> PersonaBook:
        """A PersonaBook of every persona (YAML default kept), for the chat engine."""
        personas = dict(self.base.personas)
        for row in self._operator_rows():
            personas[row["id"]] = self._record(row).persona
        return PersonaBook(personas=personas, default_id=self.base.default_id)

    def _operator_rows(self) -> list[dict]:
        with self._lock:
            rows = list(self.db.query("SELECT * FROM personas ORDER BY id"))
        return [r for r in rows if r["id"] not in self.base.personas]

    def _base_record(self, persona: Persona) -> PersonaRecord:
        language = self.base_languages.get(persona.persona_id, self.default_language)
        return PersonaRecord(persona=persona, language=language, source="config")

    @staticmethod
    def _record(row: dict) -> PersonaRecord:
        persona = Persona(
            persona_id=row["id"],
            name=row["name"],
            system_prompt=row["system_prompt"],
            traits=json.loads(row["traits"]),
        )
        return PersonaRecord(
            persona=persona, language=row["language"], source="operator", created=row["created"]
        )
