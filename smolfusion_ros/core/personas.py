"""Personas: a system prompt plus four 1-5 trait sliders, loaded from a YAML file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

TRAIT_NAMES = ("friendliness", "knowledge", "empathy", "formality")

# One sentence per trait level; 3 is neutral and adds nothing to the prompt.
_TRAIT_SENTENCES = {
    "friendliness": {
        1: "Be reserved and matter-of-fact.",
        2: "Be polite but brief.",
        4: "Be warm and friendly.",
        5: "Be very warm, cheerful and encouraging.",
    },
    "knowledge": {
        1: "Keep explanations very simple.",
        2: "Prefer simple explanations.",
        4: "Give accurate details when they help.",
        5: "Answer like an expert, precise and thorough.",
    },
    "empathy": {
        1: "Stay strictly factual.",
        2: "Focus on facts more than feelings.",
        4: "Acknowledge the person's feelings.",
        5: "Be very attentive to the person's feelings.",
    },
    "formality": {
        1: "Speak very casually.",
        2: "Speak casually.",
        4: "Speak formally.",
        5: "Speak very formally and respectfully.",
    },
}


class PersonaError(ValueError):
    """The persona file is invalid."""


@dataclass(frozen=True)
class Persona:
    persona_id: str
    name: str
    system_prompt: str
    traits: dict[str, int] = field(default_factory=dict)

    def render_system_prompt(self) -> str:
        sentences = [self.system_prompt.strip()]
        for trait in TRAIT_NAMES:
            level = self.traits.get(trait, 3)
            sentence = _TRAIT_SENTENCES[trait].get(level)
            if sentence:
                sentences.append(sentence)
        return " ".join(s for s in sentences if s)


@dataclass(frozen=True)
class PersonaBook:
    personas: dict[str, Persona]
    default_id: str

    def get(self, persona_id: str) -> Persona | None:
        return self.personas.get(persona_id or self.default_id)

    def ids(self) -> list[str]:
        return sorted(self.personas)


def load_personas(path: Path, default_override: str = "") -> PersonaBook:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle) or {}
    specs = raw.get("personas") or {}
    if not specs:
        raise PersonaError(f"{path}: no personas defined")
    personas = {}
    for persona_id, spec in specs.items():
        traits = {}
        for trait, level in (spec.get("traits") or {}).items():
            if trait not in TRAIT_NAMES:
                raise PersonaError(f"{path}: persona {persona_id}: unknown trait {trait!r}")
            if not isinstance(level, int) or not 1 <= level <= 5:
                raise PersonaError(f"{path}: persona {persona_id}: {trait} must be 1..5")
            traits[trait] = level
        if not str(spec.get("system_prompt", "")).strip():
            raise PersonaError(f"{path}: persona {persona_id}: system_prompt is empty")
        personas[persona_id] = Persona(
            persona_id=persona_id,
            name=str(spec.get("name", persona_id)),
            system_prompt=str(spec["system_prompt"]),
            traits=traits,
        )
    default_id = default_override or raw.get("default") or next(iter(personas))
    if default_id not in personas:
        raise PersonaError(f"{path}: default persona {default_id!r} is not defined")
    return PersonaBook(personas=personas, default_id=default_id)
