"""VLM back end on transformers (SmolVLM / Idefics3 class), for a CUDA GPU server.

Loads `AutoProcessor` + `AutoModelForImageTextToText` from a LOCAL directory only
(`local_files_only=True`: nothing is downloaded). Runs on CUDA when torch sees a GPU, else on
the CPU (7-10x slower than llama.cpp there: use the llama.cpp back end on CPUs and Jetsons).
Generation runs on the caller's thread (the vision worker) and streams through a small
streamer that decodes in place; a stopping criterion ends it before the next token once
`cancel` is set. (transformers' TextIteratorStreamer hands every token to another thread:
measured on an H200, 64 tokens took 2.8 s that way against 0.17 s for plain generate.)

torch and transformers are not runtime dependencies of this package: install them on the
machine that uses this back end (a CUDA build of torch on a GPU server).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from smolfusion_ros.backends.transformers_common import (
    DTYPES,
    InPlaceStreamer,
    import_torch,
    pick_device,
)
from smolfusion_ros.backends.vlm.base import VisionBackendError, VisionResult
from smolfusion_ros.backends.vlm.common import (
    DEFAULT_PROMPT,
    AnswerCollector,
    TokenCallback,
    check_image,
)


class TransformersVisionBackend:
    """Image + prompt -> text with a transformers image-text-to-text model on CUDA or CPU."""

    name = "transformers_vlm"
    kind = "vlm"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        device: str = "auto",
        dtype: str = "auto",
        temperature: float = 0.0,
        top_p: float = 0.95,
        top_k: int = 50,
        repetition_penalty: float = 1.0,
        seed: int = -1,
        n_threads: int = 0,
        system_prompt: str = "",
        default_prompt: str = DEFAULT_PROMPT,
    ) -> None:
        if dtype not in DTYPES:
            raise VisionBackendError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self._model_path = Path(model_path).expanduser() if str(model_path) else Path("")
        self._device_option = device
        self._dtype_option = dtype
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.repetition_penalty = float(repetition_penalty)
        self.seed = int(seed)
        self._n_threads = int(n_threads)
        self._system_prompt = system_prompt
        self._default_prompt = default_prompt
        self._model: Any = None
        self._processor: Any = None
        self._torch: Any = None
        self.device = ""
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_path.name

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        path = self._model_path
        if not str(path) or not (path / "config.json").is_file():
            raise VisionBackendError(
                f"VLM model directory {str(path) or '(none)'} has no config.json: set model_path "
                "to a local transformers checkpoint (e.g. SmolVLM-256M-Instruct); nothing is "
                "downloaded"
            )
        torch, transformers = import_torch(VisionBackendError, "VLM", "llama_cpp_vlm")
        self._torch = torch
        self.device, dtype = pick_device(
            torch, self._device_option, self._dtype_option, self._n_threads
        )
        model_class = (
            getattr(transformers, "AutoModelForImageTextToText", None)
            or transformers.AutoModelForVision2Seq
        )
        try:
            self._processor = transformers.AutoProcessor.from_pretrained(
                str(path), local_files_only=True
            )
            model = model_class.from_pretrained(str(path), local_files_only=True, dtype=dtype)
            self._model = model.to(self.device).eval()
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            self._processor = self._model = None
            raise VisionBackendError(f"transformers could not load {path}: {exc}") from exc

    def _image(self, image_rgb: np.ndarray) -> Any:
        image = check_image(image_rgb)
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with the image processors
            return image
        return Image.fromarray(image, mode="RGB")

    def describe(
        self,
        image_rgb: np.ndarray,
        prompt: str,
        cancel: threading.Event,
        max_tokens: int = 96,
        on_token: TokenCallback | None = None,
    ) -> VisionResult:
        """Answer `prompt` about the image; stops before the next token once `cancel` is set.

        `on_token`, when given, receives each piece of text as the streamer releases it.
        """
        if self._model is None:
            raise VisionBackendError("VLM is not loaded")
        answer = AnswerCollector(self, max_tokens, on_token)
        from transformers import StoppingCriteria, StoppingCriteriaList

        torch = self._torch
        image = self._image(image_rgb)
        messages: list[dict[str, Any]] = []
        if self._system_prompt:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": self._system_prompt}]}
            )
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": prompt.strip() or self._default_prompt},
                ],
            }
        )
        if cancel.is_set():
            return answer.result(True, device=self.device)

        text = self._processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self._processor(text=[text], images=[[image]], return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        prompt_len = int(inputs["input_ids"].shape[1])
        state = {"tokens": 0, "cancelled": False}

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[override]
                state["tokens"] = int(input_ids.shape[1]) - prompt_len
                if cancel.is_set():
                    state["cancelled"] = True
                    return torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        do_sample = self.temperature > 0
        generate_kwargs: dict[str, Any] = dict(
            inputs,
            max_new_tokens=int(max_tokens),
            do_sample=do_sample,
            repetition_penalty=self.repetition_penalty,
            stopping_criteria=StoppingCriteriaList([_Cancel()]),
            # The count comes from the stopping criterion: a streamed piece may hold several tokens.
            streamer=InPlaceStreamer(self._processor.tokenizer, lambda p: answer.add(p, 0)),
        )
        if do_sample:
            generate_kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            # Greedy: clear sampling defaults a checkpoint's generation_config may carry.
            generate_kwargs.update(temperature=None, top_p=None, top_k=None)
        with self._lock:
            if self.seed >= 0:
                torch.manual_seed(self.seed)
            try:
                with torch.inference_mode():
                    self._model.generate(**generate_kwargs)
            except Exception as exc:
                raise VisionBackendError(f"transformers VLM failed: {exc}") from exc
        cancelled = state["cancelled"] or cancel.is_set()
        return answer.result(cancelled, tokens=state["tokens"], device=self.device)

    def close(self) -> None:
        with self._lock:
            model, self._model, self._processor = self._model, None, None
        if model is not None and self.device.startswith("cuda") and self._torch is not None:
            del model
            self._torch.cuda.empty_cache()
