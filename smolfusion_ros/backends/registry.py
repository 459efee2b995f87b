"""One registry that maps back-end names from a profile to factories.

Nodes and the core never import a concrete back end: they ask the registry by name. A
factory receives the back end's options as keyword arguments (already validated by the node).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from smolfusion_ros.backends.llm.base import LLMBackend
from smolfusion_ros.backends.vlm.base import VisionBackend

LLMFactory = Callable[..., LLMBackend]
VisionFactory = Callable[..., VisionBackend]

_llm_factories: dict[str, LLMFactory] = {}
_vision_factories: dict[str, VisionFactory] = {}


def register_llm_backend(name: str, factory: LLMFactory) -> None:
    _llm_factories[name] = factory


def llm_backend_names() -> list[str]:
    return sorted(_llm_factories)


def create_llm_backend(name: str, **options: Any) -> LLMBackend:
    try:
        factory = _llm_factories[name]
    except KeyError:
        known = ", ".join(llm_backend_names())
        raise ValueError(f"unknown LLM back end '{name}' (known: {known})") from None
    return factory(**options)


def register_vision_backend(name: str, factory: VisionFactory) -> None:
    _vision_factories[name] = factory


def vision_backend_names() -> list[str]:
    return sorted(_vision_factories)


def create_vision_backend(name: str, **options: Any) -> VisionBackend:
    try:
        factory = _vision_factories[name]
    except KeyError:
        known = ", ".join(vision_backend_names()) or "none"
        raise ValueError(f"unknown vision back end '{name}' (known: {known})") from None
    return factory(**options)


def _llama_cpp(**options: Any) -> LLMBackend:
    # Imported lazily so that listing back ends never loads llama.cpp.
    from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend

    return LlamaCppChatBackend(**options)


register_llm_backend("llama_cpp", _llama_cpp)
