"""VLM back end on llama.cpp (llama-cpp-python): a GGUF language model plus its mmproj projector.

The image goes to llama-cpp-python's generic multimodal handler (`MTMDChatHandler`, which
uses the chat template stored in the GGUF) as a PNG or JPEG data URI in an OpenAI-style
`image_url` content part; tokens are streamed and `cancel` is checked between them.
Runs SmolVLM-256M/500M-Instruct (Q8_0 + f16 mmproj) on a CPU, a Jetson or a CUDA server.
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import numpy as np

from smolfusion_ros.backends.llama_cpp_stream import TokenStream
from smolfusion_ros.backends.vlm.base import VisionBackendError, VisionResult
from smolfusion_ros.backends.vlm.common import (
    DEFAULT_PROMPT,
    AnswerCollector,
    TokenCallback,
    image_data_uri,
    vision_messages,
)


class LlamaCppVisionBackend:
    """Image + prompt -> text through llama.cpp with an mmproj projector (MTMD handler)."""

    name = "llama_cpp_vlm"
    kind = "vlm"

    def __init__(
        self,
        model_path: str | os.PathLike,
        mmproj_path: str | os.PathLike = "",
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        n_batch: int = 512,
        n_gpu_layers: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.95,
        top_k: int = 40,
        repeat_penalty: float = 1.1,
        seed: int = -1,
        image_format: str = "png",
        system_prompt: str = "",
        default_prompt: str = DEFAULT_PROMPT,
        verbose: bool = False,
    ) -> None:
        self._model_path = Path(model_path).expanduser() if str(model_path) else Path("")
        self._mmproj_path = Path(mmproj_path).expanduser() if str(mmproj_path) else None
        self._n_ctx = int(n_ctx)
        self._n_threads = int(n_threads)
        self._n_batch = int(n_batch)
        self._n_gpu_layers = int(n_gpu_layers)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.repeat_penalty = float(repeat_penalty)
        self.seed = int(seed)
        self._image_format = image_format
        self._system_prompt = system_prompt
        self._default_prompt = default_prompt
        self._verbose = verbose
        self._llm = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_path.name

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    def load(self) -> None:
        if not str(self._model_path) or not self._model_path.is_file():
            raise VisionBackendError(
                f"VLM model file {str(self._model_path) or '(none)'} does not exist: "
                "set model_path to the language model GGUF (e.g. SmolVLM-256M-Instruct-Q8_0.gguf)"
            )
        if self._mmproj_path is None or not self._mmproj_path.is_file():
            shown = str(self._mmproj_path) if self._mmproj_path is not None else "(not set)"
            raise VisionBackendError(
                f"VLM projector file {shown} does not exist: set mmproj_path to the mmproj GGUF "
                f"that belongs to {self._model_path.name} (e.g. mmproj-SmolVLM-256M-Instruct-"
                "f16.gguf); llama.cpp cannot see images without it"
            )
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import MTMDChatHandler
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise VisionBackendError(
                "llama-cpp-python with multimodal support is not installed: "
                "pip install llama-cpp-python==0.3.36"
            ) from exc
        try:
            handler = MTMDChatHandler(
                clip_model_path=str(self._mmproj_path),
                verbose=self._verbose,
                use_gpu=self._n_gpu_layers != 0,
            )
            self._llm = Llama(
                model_path=str(self._model_path),
                chat_handler=handler,
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                n_batch=self._n_batch,
                n_gpu_layers=self._n_gpu_layers,
                verbose=self._verbose,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise VisionBackendError(
                f"llama.cpp could not load {self._model_path} with {self._mmproj_path}: {exc}"
            ) from exc

    def describe(
        self,
        image_rgb: np.ndarray,
        prompt: str,
        cancel: threading.Event,
        max_tokens: int = 96,
        on_token: TokenCallback | None = None,
    ) -> VisionResult:
        """Answer `prompt` about the image; stops before the next token once `cancel` is set.

        `on_token`, when given, receives each piece of text as it is generated.
        """
        if self._llm is None:
            raise VisionBackendError("VLM is not loaded")
        answer = AnswerCollector(self, max_tokens, on_token)
        uri = image_data_uri(image_rgb, self._image_format)
        messages = vision_messages(uri, prompt.strip() or self._default_prompt, self._system_prompt)
        cancelled = cancel.is_set()
        with self._lock:
            if cancelled:
                return answer.result(True)
            seed = self.seed if self.seed >= 0 else random.getrandbits(31)
            try:
                stream = self._llm.create_chat_completion(
                    messages=messages,
                    max_tokens=int(max_tokens),
                    temperature=self.temperature,
                    top_p=self.top_p,
                    top_k=self.top_k,
                    repeat_penalty=self.repeat_penalty,
                    seed=seed,
                    stream=True,
                )
                # Closed before the lock is released, also when on_token raises.
                with TokenStream(stream, cancel) as tokens:
                    for piece in tokens:
                        answer.add(piece)
                cancelled = tokens.cancelled
            except ValueError as exc:  # llama-cpp-python reports prompt/image errors so
                raise VisionBackendError(f"llama.cpp VLM failed: {exc}") from exc
        return answer.result(cancelled)

    def close(self) -> None:
        with self._lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
