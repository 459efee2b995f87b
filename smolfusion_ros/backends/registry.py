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


# Vision factories receive the node's generic options (model_path, mmproj_path, n_threads,
# n_gpu_layers, base_url, model_name; unset ones are empty or 0) and pass on what applies.


def _perception(**options: Any) -> VisionBackend:
    # Imported lazily so that listing back ends never loads OpenCV or ONNX Runtime.
    from smolfusion_ros.backends.vlm.perception import PerceptionBackend

    return PerceptionBackend(ocr_threads=max(1, options.get("n_threads") or 1))


def _llama_cpp_vlm(**options: Any) -> VisionBackend:
    # Lazy, like _llama_cpp: listing back ends never loads llama.cpp.
    from smolfusion_ros.backends.vlm.llama_cpp_vlm import LlamaCppVisionBackend

    if not options.get("model_path"):
        raise ValueError("set vision.model (a catalogue id) or vision.model_path")
    return LlamaCppVisionBackend(
        model_path=options["model_path"],
        mmproj_path=options.get("mmproj_path") or "",
        n_threads=max(1, options.get("n_threads") or 1),
        n_gpu_layers=options.get("n_gpu_layers", 0),
    )


def _transformers_vlm(**options: Any) -> VisionBackend:
    # torch and transformers are imported only when the model loads.
    from smolfusion_ros.backends.vlm.transformers_vlm import TransformersVisionBackend

    if not options.get("model_path"):
        raise ValueError("set vision.model_path to a local transformers model directory")
    return TransformersVisionBackend(
        model_path=options["model_path"], n_threads=options.get("n_threads") or 0
    )


def _openai_vlm(**options: Any) -> VisionBackend:
    from smolfusion_ros.backends.vlm.openai_vlm import OpenAIVisionBackend

    if not options.get("base_url"):
        raise ValueError("set vision.base_url to the OpenAI-compatible server")
    return OpenAIVisionBackend(base_url=options["base_url"], model=options.get("model_name", ""))


register_vision_backend("perception", _perception)
register_vision_backend("llama_cpp_vlm", _llama_cpp_vlm)
register_vision_backend("transformers_vlm", _transformers_vlm)
register_vision_backend("openai_vlm", _openai_vlm)


# ---- text to speech ------------------------------------------------------------------------
# TTS factories receive voice, rate_wpm and volume (1.0 = the engine's normal loudness).

from smolfusion_ros.backends.tts.base import TextToSpeech  # noqa: E402

TTSFactory = Callable[..., TextToSpeech]

_tts_factories: dict[str, TTSFactory] = {}


def register_tts_backend(name: str, factory: TTSFactory) -> None:
    _tts_factories[name] = factory


def tts_backend_names() -> list[str]:
    return sorted(_tts_factories)


def create_tts_backend(name: str, **options: Any) -> TextToSpeech:
    try:
        factory = _tts_factories[name]
    except KeyError:
        known = ", ".join(tts_backend_names()) or "none"
        raise ValueError(f"unknown TTS back end '{name}' (known: {known})") from None
    return factory(**options)


def _espeak(**options: Any) -> TextToSpeech:
    # Lazy, like the others: listing back ends never touches espeak-ng.
    from smolfusion_ros.backends.tts.espeak import EspeakTTS

    return EspeakTTS(
        voice=options.get("voice") or "en-us",
        rate_wpm=options.get("rate_wpm") or 170,
        volume=options.get("volume", 1.0),
    )


register_tts_backend("espeak", _espeak)


# ---- speech to text --------------------------------------------------------------------------
# STT factories receive model_path (a resolved local directory), language, n_threads,
# beam_size, device and compute_type (unset ones are empty or 0) and pass on what applies.

from smolfusion_ros.backends.stt.base import SpeechToText  # noqa: E402  (numpy only)

STTFactory = Callable[..., SpeechToText]

_stt_factories: dict[str, STTFactory] = {}


def register_stt_backend(name: str, factory: STTFactory) -> None:
    _stt_factories[name] = factory


def stt_backend_names() -> list[str]:
    return sorted(_stt_factories)


def create_stt_backend(name: str, **options: Any) -> SpeechToText:
    try:
        factory = _stt_factories[name]
    except KeyError:
        known = ", ".join(stt_backend_names()) or "none"
        raise ValueError(f"unknown speech back end '{name}' (known: {known})") from None
    return factory(**options)


def _faster_whisper(**options: Any) -> SpeechToText:
    # Imported lazily: listing back ends never loads CTranslate2.
    from smolfusion_ros.backends.stt.faster_whisper_stt import FasterWhisperSTT

    if not options.get("model_path"):
        raise ValueError("set stt.model (a catalogue id) or stt.model_path")
    return FasterWhisperSTT(
        model_path=options["model_path"],
        compute_type=options.get("compute_type") or "int8",
        n_threads=max(1, options.get("n_threads") or 1),
        beam_size=max(1, options.get("beam_size") or 5),
        language=options.get("language") or "en",
        device=options.get("device") or "cpu",
    )


def _vosk(**options: Any) -> SpeechToText:
    from smolfusion_ros.backends.stt.vosk_stt import VoskSTT

    if not options.get("model_path"):
        raise ValueError("set stt.model (a catalogue id) or stt.model_path")
    return VoskSTT(
        model_dir=options["model_path"],
        sample_rate=16000,
        language=options.get("language") or "",
    )


register_stt_backend("faster_whisper", _faster_whisper)
register_stt_backend("vosk", _vosk)
