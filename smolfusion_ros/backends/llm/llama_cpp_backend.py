"""LLM back end on llama.cpp (llama-cpp-python): GGUF models on CPU, Jetson or CUDA."""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

from smolfusion_ros.backends.llm.base import ChatMessage, GenerationSettings, LLMBackendError


class LlamaCppChatBackend:
    """Chat completion through llama-cpp-python, with the chat template stored in the GGUF.

    The Llama object keeps the previous prompt's KV cache, so a follow-up turn of the same
    session only evaluates the new tokens.
    """

    name = "llama_cpp"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_batch: int = 256,
        n_gpu_layers: int = 0,
        chat_format: str = "",
        verbose: bool = False,
    ) -> None:
        self._model_path = Path(model_path)
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._n_batch = n_batch
        self._n_gpu_layers = n_gpu_layers
        self._chat_format = chat_format or None
        self._verbose = verbose
        self._llm = None

    @property
    def model_name(self) -> str:
        return self._model_path.name

    @property
    def context_size(self) -> int:
        return self._llm.n_ctx() if self._llm is not None else self._n_ctx

    def load(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise LLMBackendError(
                "llama-cpp-python is not installed: pip install llama-cpp-python==0.3.36"
            ) from exc
        try:
            self._llm = Llama(
                model_path=str(self._model_path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                n_batch=self._n_batch,
                n_gpu_layers=self._n_gpu_layers,
                chat_format=self._chat_format,
                verbose=self._verbose,
            )
        except (ValueError, RuntimeError) as exc:
            raise LLMBackendError(f"llama.cpp could not load {self._model_path}: {exc}") from exc

    def count_tokens(self, text: str) -> int:
        if self._llm is None:
            return max(1, len(text) // 4)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream_chat(
        self,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        cancel: threading.Event,
    ) -> Iterator[str]:
        if self._llm is None:
            raise LLMBackendError("model is not loaded")
        # llama-cpp-python reuses its construction seed when none is given, which would make
        # every answer to the same prompt identical: draw a fresh one unless fixed.
        seed = settings.seed if settings.seed >= 0 else random.getrandbits(31)
        stream = self._llm.create_chat_completion(
            messages=list(messages),
            max_tokens=settings.max_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repeat_penalty=settings.repeat_penalty,
            stream=True,
            seed=seed,
        )
        try:
            for chunk in stream:
                if cancel.is_set():
                    break
                delta = chunk["choices"][0]["delta"].get("content")
                if delta:
                    yield delta
        finally:
            # Closing the generator ends llama.cpp's sampling loop at once.
            stream.close()

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
