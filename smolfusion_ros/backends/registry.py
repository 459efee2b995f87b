"""One registry per kind of back end; profiles pick back ends by name through them.

Nodes and the core never import a concrete back end: they ask a registry by name. A factory
receives the node's options as keyword arguments (already validated by the node) and imports
its back end lazily, so listing the names never loads a model runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from smolfusion_ros.backends.llm.base import LLMBackend
from smolfusion_ros.backends.stt.base import SpeechToText
from smolfusion_ros.backends.tts.base import TextToSpeech
from smolfusion_ros.backends.vlm.base import VisionBackend

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> None:
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def create(self, name: str, **options: Any) -> T:
        try:
            factory = self._factories[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise ValueError(f"unknown {self._kind} back end '{name}' (known: {known})") from None
        return factory(**options)


llm_backends: Registry[LLMBackend] = Registry("LLM")
vision_backends: Registry[VisionBackend] = Registry("vision")
tts_backends: Registry[TextToSpeech] = Registry("TTS")
stt_backends: Registry[SpeechToText] = Registry("speech-to-text")

# The names the nodes and tests use.
register_llm_backend, llm_backend_names, create_llm_backend = (
    llm_backends.register,
    llm_backends.names,
    llm_backends.create,
)
register_vision_backend, vision_backend_names, create_vision_backend = (
    vision_backends.register,
    vision_backends.names,
    vision_backends.create,
)
register_tts_backend, tts_backend_names, create_tts_backend = (
    tts_backends.register,
    tts_backends.names,
    tts_backends.create,
)
register_stt_backend, stt_backend_names, create_stt_backend = (
    stt_backends.register,
    stt_backends.names,
    stt_backends.create,
)


# LLM factories receive the node's options: model_path (a resolved file or directory; None for
# a remote back end), n_ctx, n_threads, n_batch, n_gpu_layers, session_cache_bytes,
# background_chunk, and for a remote server base_url, model_name, api_key_env, timeout_s,
# connect_timeout_s, retries, cache_prompt. Each passes on what applies to it.
_REMOTE_LLM_OPTIONS = (
    "base_url",
    "model_name",
    "api_key_env",
    "timeout_s",
    "connect_timeout_s",
    "retries",
    "cache_prompt",
)
# Back ends that run the model elsewhere: the node resolves no model file for them.
REMOTE_LLM_BACKENDS = frozenset({"openai"})


def _llama_cpp(**options: Any) -> LLMBackend:
    # Imported lazily so that listing back ends never loads llama.cpp.
    from smolfusion_ros.backends.llm.llama_cpp_backend import LlamaCppChatBackend

    for key in _REMOTE_LLM_OPTIONS:
        options.pop(key, None)
    return LlamaCppChatBackend(**options)


def _openai_llm(**options: Any) -> LLMBackend:
    # httpx2 is imported only when the back end loads.
    from smolfusion_ros.backends.llm.openai_backend import OpenAIChatBackend

    if not options.get("base_url"):
        raise ValueError("set llm.base_url to the OpenAI-compatible server (http://host:port/v1)")
    given = {key: options[key] for key in _REMOTE_LLM_OPTIONS[2:] if key in options}
    return OpenAIChatBackend(
        base_url=options["base_url"],
        model=options.get("model_name") or "",
        n_ctx=options.get("n_ctx") or 2048,
        **given,
    )


def _transformers_llm(**options: Any) -> LLMBackend:
    # torch and transformers are imported only when the model loads.
    from smolfusion_ros.backends.llm.transformers_backend import TransformersChatBackend

    if not options.get("model_path"):
        raise ValueError("set llm.model (a catalogue id) or llm.model_path")
    return TransformersChatBackend(
        model_path=options["model_path"],
        n_ctx=options.get("n_ctx") or 2048,
        n_threads=options.get("n_threads") or 0,
        n_batch=options.get("n_batch") or 512,
        session_cache_bytes=options.get("session_cache_bytes") or 0,
        background_chunk=options.get("background_chunk") or 16,
    )


register_llm_backend("llama_cpp", _llama_cpp)
register_llm_backend("openai", _openai_llm)
register_llm_backend("transformers", _transformers_llm)


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
    # A robot of a fleet may boot before the server: vision starts, and asks it per request.
    return OpenAIVisionBackend(
        base_url=options["base_url"],
        model=options.get("model_name", ""),
        tolerate_unreachable=True,
    )


register_vision_backend("perception", _perception)
register_vision_backend("llama_cpp_vlm", _llama_cpp_vlm)
register_vision_backend("transformers_vlm", _transformers_vlm)
register_vision_backend("openai_vlm", _openai_vlm)


# ---- text to speech: factories receive voice, rate_wpm and volume.


def _espeak(**options: Any) -> TextToSpeech:
    # Lazy, like the others: listing back ends never touches espeak-ng.
    from smolfusion_ros.backends.tts.espeak import EspeakTTS

    return EspeakTTS(
        voice=options.get("voice") or "en-us",
        rate_wpm=options.get("rate_wpm") or 170,
        volume=options.get("volume", 1.0),
    )


register_tts_backend("espeak", _espeak)


# ---- speech to text: factories receive model_path (a resolved local directory), language,
# n_threads, beam_size, device and compute_type (unset ones empty or 0).


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
