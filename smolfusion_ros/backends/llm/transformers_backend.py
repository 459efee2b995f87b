"""LLM back end on transformers + torch: CUDA when torch sees a GPU, the CPU otherwise.

The model comes from a LOCAL transformers checkpoint directory, or from a GGUF file through
transformers' GGUF loader (`gguf_file=`, needs the `gguf` package; the weights are
dequantised to the torch dtype), so the catalogue's GGUF models load here too. Nothing is
downloaded (`local_files_only=True`).

Decoding runs token by token in `stream_chat` itself, on the caller's thread (the chat
engine's worker): every token is yielded as soon as it is sampled, with no hand-off to another
thread (transformers' TextIteratorStreamer does that and is slow: see transformers_common),
and `cancel` is checked between tokens. Sampling uses transformers' own logits processors
(repetition penalty, temperature, top-k, top-p).

Like llama.cpp, the back end keeps the KV cache of the last prompt (a DynamicCache) and
evaluates only what follows the longest common token prefix; `use_session` keeps each
conversation's cache in a least-recently-used store bounded by `session_cache_bytes`, and
`prefill` / `preemptible` evaluate a prompt in chunks that stop when `cancel` is set.

On a CPU llama.cpp is several times faster (quantised weights): this back end is for a CUDA
server, where the profiles' bigger models run in bf16.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolfusion_ros.backends.llm.base import ChatMessage, GenerationSettings, LLMBackendError
from smolfusion_ros.backends.transformers_common import (
    DTYPES,
    InPlaceStreamer,
    import_torch,
    pick_device,
)

log = logging.getLogger(__name__)

# Prompt tokens per forward pass for background (preemptible) evaluation: a waiting request
# is delayed by about one such step.
BACKGROUND_EVAL_CHUNK = 16


@dataclass
class _Cached:
    ids: list[int]  # the tokens whose keys and values the cache holds, in order
    cache: Any  # transformers DynamicCache

    @property
    def nbytes(self) -> int:
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for name in ("keys", "values"):
                tensor = getattr(layer, name, None)
                if tensor is not None and hasattr(tensor, "numel"):
                    total += tensor.numel() * tensor.element_size()
        return total


class TransformersChatBackend:
    """Chat completion with a transformers causal LM, streamed on the calling thread."""

    name = "transformers"

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        n_ctx: int = 2048,
        n_threads: int = 0,
        device: str = "auto",
        dtype: str = "auto",
        n_batch: int = 512,
        session_cache_bytes: int = 0,
        background_chunk: int = BACKGROUND_EVAL_CHUNK,
    ) -> None:
        if dtype not in DTYPES:
            raise LLMBackendError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self._model_path = Path(model_path).expanduser()
        self._n_ctx = int(n_ctx)
        self._n_threads = int(n_threads)
        self._device_option = device
        self._dtype_option = dtype
        self._n_batch = max(1, int(n_batch))
        self._background_chunk = max(1, int(background_chunk))
        self._session_budget = max(0, int(session_cache_bytes))
        self._model: Any = None
        self._tokenizer: Any = None
        self._torch: Any = None
        self._eos: set[int] = set()
        self.device = ""
        self._active: _Cached | None = None
        self._active_session = ""
        self._sessions: OrderedDict[str, _Cached] = OrderedDict()
        self.prompt_tokens_evaluated = 0
        self.session_restores = 0

    # ------------------------------------------------------------------ protocol
    @property
    def model_name(self) -> str:
        return self._model_path.name

    @property
    def context_size(self) -> int:
        limit = getattr(getattr(self._model, "config", None), "max_position_embeddings", 0)
        return min(self._n_ctx, limit) if limit else self._n_ctx

    def load(self) -> None:
        path = self._model_path
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise LLMBackendError(
                    f"{path} is a file but not a .gguf model: set the model path to a GGUF file "
                    "or a transformers checkpoint directory"
                )
            directory, options = str(path.parent), {"gguf_file": path.name}
        elif (path / "config.json").is_file():
            directory, options = str(path), {}
        else:
            raise LLMBackendError(
                f"{path} is neither a GGUF file nor a transformers checkpoint directory "
                "(config.json); nothing is downloaded"
            )
        torch, transformers = import_torch(LLMBackendError, "LLM", "llama_cpp")
        transformers.utils.logging.disable_progress_bar()  # no bars in a node's log
        self._torch = torch
        self.device, dtype = pick_device(
            torch, self._device_option, self._dtype_option, self._n_threads
        )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(
                directory, local_files_only=True, **options
            )
            model = transformers.AutoModelForCausalLM.from_pretrained(
                directory, local_files_only=True, dtype=dtype, **options
            )
        except ImportError as exc:  # the GGUF loader without the gguf package
            raise LLMBackendError(
                f"transformers could not load {path}: {exc} (pip install gguf==0.19.0)"
            ) from exc
        except Exception as exc:  # a damaged file fails in many ways; each is one line
            raise LLMBackendError(f"transformers could not load {path}: {exc}") from exc
        if not getattr(tokenizer, "chat_template", None):
            raise LLMBackendError(f"{path} has no chat template; an instruct model is needed")
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        eos = [tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)]
        for value in eos:
            if isinstance(value, int):
                self._eos.add(value)
            elif isinstance(value, (list, tuple)):
                self._eos.update(int(v) for v in value)
        log.info("transformers LLM %s on %s (%s)", path.name, self.device, dtype)

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            return max(1, len(text) // 4)
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    # ------------------------------------------------------------------ sessions
    def use_session(self, session_id: str) -> None:
        """Make `session_id`'s cache current, keeping the active one when the budget allows."""
        if self._model is None or session_id == self._active_session:
            return
        if self._session_budget and self._active_session and self._active is not None:
            self._sessions[self._active_session] = self._active
            self._sessions.move_to_end(self._active_session)
            while (
                sum(saved.nbytes for saved in self._sessions.values()) > self._session_budget
                and self._sessions
            ):
                self._sessions.popitem(last=False)  # least recently used
        self._active_session = session_id
        self._active = self._sessions.pop(session_id, None)
        if self._active is not None:
            self.session_restores += 1

    def forget_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    # ---------------------------------------------------------------- generation
    def _prompt_ids(self, messages: list[ChatMessage]) -> list[int]:
        ids = self._tokenizer.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in messages],
            add_generation_prompt=True,
            tokenize=True,
        )
        if hasattr(ids, "keys"):  # a BatchEncoding in newer transformers
            ids = ids["input_ids"]
        ids = list(ids)
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(t) for t in ids]

    def _evaluate(self, ids: list[int], cancel: threading.Event, chunk: int) -> Any:
        """Bring the cache to hold `ids[:-1]`, then evaluate `ids[-1]`; returns the last
        logits, or None when `cancel` stopped it (the cache keeps what was evaluated)."""
        from transformers import DynamicCache

        torch = self._torch
        active = self._active
        if active is None:
            active = self._active = _Cached([], DynamicCache())
        common = 0
        for old, new in zip(active.ids, ids, strict=False):
            if old != new:
                break
            common += 1
        common = min(common, len(ids) - 1)  # at least the last token, for its logits
        if common == 0 and active.ids:
            active = self._active = _Cached([], DynamicCache())
        elif common < len(active.ids):
            # A negative count removes that many tokens (transformers 4.4x and 5.x alike).
            active.cache.crop(common - len(active.ids))
            del active.ids[common:]
        logits = None
        position = common
        while position < len(ids):
            if cancel.is_set():
                return None
            part = ids[position : position + chunk]
            with torch.inference_mode():
                out = self._model(
                    input_ids=torch.tensor([part], device=self.device),
                    past_key_values=active.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            active.ids.extend(part)
            position += len(part)
            self.prompt_tokens_evaluated += len(part)
            logits = out.logits[:, -1, :]
        return logits

    def stream_chat(
        self,
        messages: list[ChatMessage],
        settings: GenerationSettings,
        cancel: threading.Event,
    ) -> Iterator[str]:
        if self._model is None:
            raise LLMBackendError("model is not loaded")
        if settings.max_tokens < 1:
            raise LLMBackendError(f"max_tokens must be at least 1, got {settings.max_tokens}")
        from transformers import (
            LogitsProcessorList,
            RepetitionPenaltyLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        torch = self._torch
        ids = self._prompt_ids(messages)
        if len(ids) >= self.context_size:
            raise LLMBackendError(
                f"prompt of {len(ids)} tokens does not fit the context of {self.context_size}"
            )
        self.prompt_tokens_evaluated = 0
        chunk = self._background_chunk if settings.preemptible else self._n_batch
        try:
            logits = self._evaluate(ids, cancel, chunk)
        except RuntimeError as exc:
            self._active = None  # a failed forward pass may leave the cache half-written
            raise LLMBackendError(f"transformers LLM failed: {exc}") from exc
        if logits is None:
            return
        processors = LogitsProcessorList()
        if settings.repeat_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(settings.repeat_penalty))
        sample = settings.temperature > 0
        if sample:
            processors.append(TemperatureLogitsWarper(settings.temperature))
            if settings.top_k > 0:
                processors.append(TopKLogitsWarper(settings.top_k))
            if 0 < settings.top_p < 1:
                processors.append(TopPLogitsWarper(settings.top_p))
        generator = None
        if sample and settings.seed >= 0:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        pieces: list[str] = []
        streamer = InPlaceStreamer(self._tokenizer, pieces.append, skip_prompt=False)
        history = torch.tensor([ids], device=self.device)
        active = self._active
        limit = min(settings.max_tokens, self.context_size - len(ids))
        try:
            for produced in range(limit):
                if cancel.is_set():
                    return
                with torch.inference_mode():
                    scores = processors(history, logits.float())
                    if sample:
                        probs = torch.softmax(scores, dim=-1)
                        token = torch.multinomial(probs, 1, generator=generator)
                    else:
                        token = torch.argmax(scores, dim=-1, keepdim=True)
                token_id = int(token.item())
                if token_id in self._eos:
                    break
                streamer.put(token_id)
                while pieces:
                    yield pieces.pop(0)
                if produced + 1 == limit or cancel.is_set():
                    break
                history = torch.cat([history, token], dim=1)
                with torch.inference_mode():
                    out = self._model(
                        input_ids=token,
                        past_key_values=active.cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                active.ids.append(token_id)
                logits = out.logits[:, -1, :]
            streamer.end()
            while pieces:
                yield pieces.pop(0)
        except RuntimeError as exc:
            self._active = None
            raise LLMBackendError(f"transformers LLM failed: {exc}") from exc

    def prefill(
        self, messages: list[ChatMessage], settings: GenerationSettings, cancel: threading.Event
    ) -> int:
        """Evaluate the prompt `messages` gives without answering; returns tokens evaluated."""
        if self._model is None:
            raise LLMBackendError("model is not loaded")
        self.prompt_tokens_evaluated = 0
        chunk = self._background_chunk if settings.preemptible else self._n_batch
        ids = self._prompt_ids(messages)
        try:
            self._evaluate(ids, cancel, chunk)
        except RuntimeError as exc:
            self._active = None
            raise LLMBackendError(f"transformers LLM failed: {exc}") from exc
        return self.prompt_tokens_evaluated

    def close(self) -> None:
        self._sessions.clear()
        self._active = None
        model, self._model, self._tokenizer = self._model, None, None
        if model is not None and self.device.startswith("cuda") and self._torch is not None:
            del model
            self._torch.cuda.empty_cache()
