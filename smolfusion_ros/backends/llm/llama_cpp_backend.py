"""LLM back end on llama.cpp (llama-cpp-python): GGUF models on CPU, Jetson or CUDA."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smolfusion_ros.backends.llama_cpp_stream import TokenStream
from smolfusion_ros.backends.llm.base import ChatMessage, GenerationSettings, LLMBackendError

log = logging.getLogger(__name__)

# Most tokens per llama_decode call for preemptible (background) prompt evaluation when the
# decode cannot be aborted from outside (layers offloaded to a GPU: llama.cpp polls its abort
# callback only on the CPU). The back end adapts the chunk below this bound so that one chunk
# takes no longer than one decode step of the same model on the same machine (measured while
# it generates): a waiting request is then delayed by about one decode step, not by a whole
# prompt evaluation (a summary's prompt of ~400 tokens took 0.3 s on SmolLM2 and seconds on
# Qwen2.5-1.5B on 2 cores, unstoppable).
# On the CPU, background work evaluates in chunks of n_batch instead and a waiting request
# aborts the running decode between two graph nodes (llama_set_abort_callback). The small
# chunks cost too much there: on 2 loaded cores they shrank to 1-2 tokens, so re-evaluating a
# session's prefix after its summary changed ran at decode speed and did not finish within a
# person's pause (the next question paid for the rest: first token 1.2-1.7 s, issue 8).
BACKGROUND_EVAL_CHUNK = 16
# Log lines llama.cpp writes when a decode is aborted (it drops the unfinished chunk from the
# KV cache); expected for preempted background work, so not passed on to the log.
_ABORT_LOG_LINES = (
    "removing memory module entries",
    "failed to decode",
    "failed to compute graph",
    "graph_compute:",
)
_log_state = threading.local()  # .aborting: this thread is in a background decode
_log_filter = None  # the installed llama_log_set callback (kept alive here)


def _install_log_filter() -> None:
    """Pass llama.cpp's log on to llama-cpp-python's handler, without the lines of an
    intended abort (once per process; the callback is process-wide)."""
    global _log_filter
    if _log_filter is not None:
        return
    import llama_cpp
    from llama_cpp import _logger

    forward = _logger.llama_log_callback

    @llama_cpp.llama_log_callback
    def filtered(level, text, user_data):
        if getattr(_log_state, "aborting", False) and any(
            line in (text or b"").decode("utf-8", "replace") for line in _ABORT_LOG_LINES
        ):
            return
        forward(level, text, user_data)

    _log_filter = filtered
    llama_cpp.llama_log_set(filtered, ctypes.c_void_p(0))


def _flag_reader():
    """A C function usable as llama.cpp's abort callback on a two-byte flag buffer.

    llama.cpp calls `bool abort_callback(void *data)` on its compute thread after every graph
    node. A Python callback would take the GIL hundreds of times per decode, and wait for it
    whenever another thread holds it while the other compute threads spin. libc's strlen of
    the buffer is 0 (go on) or 1 (abort) and needs no GIL: both ABIs this runs on (x86-64
    System V, AArch64) return it in the register a bool is read from. load() checks that an
    abort really happens before relying on it. None when libc cannot be found.
    """
    try:
        return ctypes.CDLL(None).strlen
    except (OSError, AttributeError):
        return None


@dataclass(frozen=True)
class _Resume:
    key: tuple  # (messages, max_tokens) of the generation
    tokens: np.ndarray  # prompt + generated token ids, all evaluated
    prompt_end: int  # where the generated ones start


class _Preempted(Exception):
    """Raised inside llama-cpp-python's generate() to stop a prompt evaluation between chunks."""


@dataclass
class _SavedSession:
    tokens: np.ndarray  # the token ids the saved KV cache holds, in order
    state: ctypes.Array  # llama_state_seq_get_data output for sequence 0

    @property
    def nbytes(self) -> int:
        return len(self.state) + self.tokens.nbytes


class LlamaCppChatBackend:
    """Chat completion through llama-cpp-python, with the chat template stored in the GGUF.

    The Llama object keeps the previous prompt's KV cache, so a follow-up turn of the same
    session only evaluates the new tokens (llama-cpp-python matches the new prompt's tokens
    against the ones it evaluated last and keeps the common prefix). Interleaved sessions
    would evict each other's cache; `session_cache_bytes` > 0 keeps each session's state
    (the KV cells of sequence 0 and their token ids, through llama_state_seq_get/set_data)
    in a least-recently-used store bounded by that many bytes, saved when another session
    takes the context and restored when the session speaks again.
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
        session_cache_bytes: int = 0,
        background_chunk: int = BACKGROUND_EVAL_CHUNK,
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
        self._background_chunk = max(1, background_chunk)
        self._chunk_now = self._background_chunk  # adapted to the decode step time
        self._decode_step_s = 0.0  # moving average of one generated token's evaluation
        self._preemptible = False
        # Abort of a running decode (CPU only; see _flag_reader): byte 0 set = abort.
        self._abort_flag = (ctypes.c_ubyte * 2)()
        self._abort_callback = None  # kept alive while the context may call it
        self._abortable = False
        self._abort_requested_at = 0.0
        self.aborts = 0  # background decodes stopped mid-way for a waiting request
        self._prompt_end: int | None = None  # n_tokens once this generation's prompt is in
        self._resume: _Resume | None = None  # the last preempted background generation
        self.resumes = 0  # preempted background generations taken up where they stopped
        self.last_abort_delay_s = 0.0  # abort requested -> the decode returned
        # Per-call evaluation control, read by the patched Llama.eval (one worker thread).
        self._eval_chunk = n_batch
        self._eval_cancel: threading.Event | None = None
        self._counting_prompt = False
        # Tokens evaluated before the first answer token of the last generation (or prefill):
        # how much of the prompt the KV cache did not already hold.
        self.prompt_tokens_evaluated = 0
        self.tokens_evaluated_total = 0
        self._session_budget = max(0, int(session_cache_bytes))
        self._sessions: OrderedDict[str, _SavedSession] = OrderedDict()
        self._active_session = ""
        self.session_restores = 0
        self.session_saves = 0

    @property
    def model_name(self) -> str:
        return self._model_path.name

    @property
    def context_size(self) -> int:
        return self._llm.n_ctx() if self._llm is not None else self._n_ctx

    @property
    def session_cache_bytes(self) -> int:
        return sum(saved.nbytes for saved in self._sessions.values())

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
        self._patch_eval()
        if self._n_gpu_layers == 0:
            self._abortable = self._install_abort()
        if self._abortable:
            self._chunk_now = self._n_batch

    def _install_abort(self) -> bool:
        """Let a waiting request stop a background decode between two graph nodes; True when
        a test decode of one token was really aborted (and one without the flag was not)."""
        import llama_cpp

        reader = _flag_reader()
        if reader is None:
            return False
        _install_log_filter()
        llm = self._llm
        callback = ctypes.cast(reader, llama_cpp.ggml_abort_callback)
        data = ctypes.cast(self._abort_flag, ctypes.c_void_p)
        llama_cpp.llama_set_abort_callback(llm._ctx.ctx, callback, data)
        self._abort_callback = callback
        token = llm.token_bos() if llm.token_bos() >= 0 else 0
        aborted = False
        _log_state.aborting = True
        try:
            self._abort_flag[0] = 1
            try:
                self._evaluate_raw([token])
            except RuntimeError:
                aborted = True
            self._abort_flag[0] = 0
            if aborted:
                self._evaluate_raw([token])  # must work again once the flag is down
        except RuntimeError as exc:
            log.warning("llama.cpp abort check failed, background work uses small chunks: %s", exc)
            aborted = False
        finally:
            _log_state.aborting = False
            self._abort_flag[0] = 0
            llm.reset()
            llm._ctx.kv_cache_seq_rm(-1, -1, -1)
        if not aborted:
            no_callback = llama_cpp.ggml_abort_callback()  # NULL
            llama_cpp.llama_set_abort_callback(llm._ctx.ctx, no_callback, None)
            self._abort_callback = None
        return aborted

    def _abort_now(self) -> None:
        """Interrupt hook (any thread): stop the running background decode."""
        self._abort_requested_at = time.perf_counter()
        self._abort_flag[0] = 1

    def _patch_eval(self) -> None:
        """Route llama-cpp-python's prompt evaluation through chunks we can stop between.

        Llama.generate() evaluates the whole uncached prompt in one eval() call before the
        first token; a long one (a summary's, or a whole history after the prefix changed)
        could not be interrupted. The instance attribute shadows the method; eval() itself
        keeps n_tokens and input_ids consistent after every chunk, so a stopped evaluation
        leaves a valid, reusable prefix in the KV cache.
        """
        llm = self._llm
        evaluate = self._evaluate_raw = llm.eval  # the bound original

        def eval_in_chunks(tokens) -> None:
            tokens = list(tokens)
            start = 0
            while start < len(tokens):
                cancel = self._eval_cancel
                if cancel is not None and cancel.is_set():
                    raise _Preempted
                step = self._chunk_now if self._preemptible else max(1, self._eval_chunk)
                part = tokens[start : start + step]
                began = time.perf_counter()
                try:
                    evaluate(part)
                except RuntimeError:
                    if not (self._preemptible and self._abort_flag[0]):
                        raise
                    # Aborted for a waiting request: llama.cpp dropped this chunk from the KV
                    # cache and n_tokens was not advanced, so the evaluated prefix stays valid.
                    self._aborted(time.perf_counter())
                    raise _Preempted from None
                self._observe(len(part), step, time.perf_counter() - began)
                start += len(part)
                self.tokens_evaluated_total += len(part)
                if self._counting_prompt:
                    self.prompt_tokens_evaluated += len(part)
            if self._prompt_end is None:  # generate() evaluates the whole prompt in one call
                self._prompt_end = llm.n_tokens

        llm.eval = eval_in_chunks

    def _observe(self, evaluated: int, step: int, seconds: float) -> None:
        """Learn one decode step's time from generation, and keep background chunks within
        it: halve the chunk when one took longer, double it (up to the bound) when one took
        less than half."""
        if evaluated == 1 and not self._counting_prompt:
            previous = self._decode_step_s
            self._decode_step_s = seconds if not previous else 0.8 * previous + 0.2 * seconds
        elif self._preemptible and self._abortable and evaluated == step:
            self._chunk_now = min(self._n_batch, step * 2)  # completed: grow back (_aborted)
        elif (
            self._preemptible and not self._abortable and evaluated == step and self._decode_step_s
        ):
            if seconds > self._decode_step_s and step > 1:
                self._chunk_now = max(1, step // 2)
            elif seconds < 0.5 * self._decode_step_s and step < self._background_chunk:
                self._chunk_now = min(self._background_chunk, step * 2)

    def _keep_for_resume(self, key: tuple) -> None:
        """Remember a preempted background generation's tokens (prompt and what it generated
        so far, as evaluated into the KV cache) to go on from there next time."""
        llm, prompt_end = self._llm, self._prompt_end
        if llm is None or prompt_end is None or llm.n_tokens <= prompt_end:
            return  # stopped before it generated anything: its prompt is in the cache anyway
        self._resume = _Resume(key, llm.input_ids[: llm.n_tokens].copy(), prompt_end)

    def _aborted(self, now: float) -> None:
        """A background decode was aborted: its chunk's work is lost, so the next chunks are
        halved (on a loaded machine a whole n_batch chunk took longer than a person's pause,
        was aborted every time and the background never got anywhere); each chunk that
        completes doubles it again (up to n_batch). Halving also keeps the abort itself
        within about one decode step where a graph node of a large model takes that long."""
        self.aborts += 1
        self.last_abort_delay_s = max(0.0, now - self._abort_requested_at)
        self._chunk_now = max(1, self._chunk_now // 2)

    @property
    def background_chunk(self) -> int:
        """Tokens per background evaluation step right now (adapted)."""
        return self._chunk_now

    @property
    def abortable(self) -> bool:
        """True when a waiting request aborts a running background decode (CPU)."""
        return self._abortable

    def count_tokens(self, text: str) -> int:
        if self._llm is None:
            return max(1, len(text) // 4)
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    # ---------------------------------------------------------------- sessions
    def use_session(self, session_id: str) -> None:
        """Make `session_id`'s KV state current: save the active session's state (when the
        cache is on), then restore `session_id`'s if it was saved. "" = outside any session.
        """
        if self._llm is None or session_id == self._active_session:
            return
        if self._session_budget and self._active_session and self._llm.n_tokens > 0:
            self._save(self._active_session)
        self._active_session = session_id
        saved = self._sessions.pop(session_id, None)
        if saved is not None:
            self._restore(saved)

    def forget_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    @property
    def keeps_sessions(self) -> bool:
        """True when a session's state survives another session using the context."""
        return self._session_budget > 0

    def move_session(self, source: str, target: str) -> bool:
        """`source`'s state (active or saved) becomes `target`'s; `target`'s is dropped."""
        if self._llm is None or source == target:
            return False
        if self._active_session == source:
            self._sessions.pop(target, None)
            self._active_session = target
            return True
        saved = self._sessions.pop(source, None)
        if saved is None:
            return False
        if self._active_session == target:
            # The context holds target's old state: make source's current instead.
            self._restore(saved)
        else:
            self._sessions[target] = saved
            self._sessions.move_to_end(target)
        return True

    def _save(self, session_id: str) -> None:
        import llama_cpp

        ctx = self._llm._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        n_tokens = self._llm.n_tokens
        if size + n_tokens * 4 > self._session_budget:
            return  # larger than the whole budget: keeping it would evict everything else
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buffer, size, 0)
        if written == 0:
            return
        saved = _SavedSession(self._llm.input_ids[:n_tokens].copy(), buffer)
        self._sessions[session_id] = saved
        self._sessions.move_to_end(session_id)
        self.session_saves += 1
        while self.session_cache_bytes > self._session_budget and len(self._sessions) > 1:
            self._sessions.popitem(last=False)  # least recently used

    def _restore(self, saved: _SavedSession) -> None:
        import llama_cpp

        llm = self._llm
        llm._ctx.kv_cache_seq_rm(-1, -1, -1)
        if llama_cpp.llama_state_seq_set_data(llm._ctx.ctx, saved.state, len(saved.state), 0):
            n_tokens = len(saved.tokens)
            llm.input_ids[:n_tokens] = saved.tokens
            llm.n_tokens = n_tokens
            self.session_restores += 1
        else:  # the context could not take it back: start from an empty cache
            llm.n_tokens = 0
        # The logits of the last token are not part of the saved state: generate() must
        # evaluate at least one token before sampling (it replays the last one if needed).
        llm._requires_eval = True

    # -------------------------------------------------------------- generation
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
        self._eval_chunk = self._n_batch
        self._preemptible = settings.preemptible
        # Every request is cancellable between prompt chunks too (a long prompt on a slow
        # machine takes seconds); background work additionally uses small chunks.
        self._eval_cancel = cancel
        self.prompt_tokens_evaluated = 0
        self._counting_prompt = True
        # Background work on the CPU: a waiting request (cancel is then an Interrupt) aborts
        # the running decode at once instead of after the chunk.
        hooks = contextlib.ExitStack()
        self._abort_flag[0] = 0
        if settings.preemptible and self._abortable and hasattr(cancel, "hooked"):
            hooks.enter_context(cancel.hooked(self._abort_now))
            _log_state.aborting = True
        sampling = dict(
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repeat_penalty=settings.repeat_penalty,
            stream=True,
            seed=seed,
        )
        # A preempted background generation of the same messages goes on where it stopped
        # (a summary on a slow model is longer than a person's pause: restarted from the
        # beginning every time, it would never finish).
        key = (tuple((m["role"], m["content"]) for m in messages), settings.max_tokens)
        resume = self._resume
        if resume is not None and resume.key == key and settings.preemptible:
            self._resume = None
            self.resumes += 1
            self._prompt_end = resume.prompt_end
            done = resume.tokens[resume.prompt_end :].tolist()
            text = self._llm.detokenize(done).decode("utf-8", "ignore")
            stream = self._llm.create_completion(
                prompt=resume.tokens.tolist(),
                max_tokens=max(1, settings.max_tokens - len(done)),
                **sampling,
            )
        else:
            self._prompt_end = None
            text = ""
            stream = self._llm.create_chat_completion(
                messages=list(messages), max_tokens=settings.max_tokens, **sampling
            )
        tokens = TokenStream(
            stream, cancel, interrupted_by=(_Preempted,), on_first_chunk=self._prompt_done
        )
        try:
            if text:
                yield text
            yield from tokens
        finally:
            if tokens.cancelled and settings.preemptible:
                self._keep_for_resume(key)
            self._counting_prompt = False
            self._preemptible = False
            self._eval_cancel = None
            # After this no hook can run: the flag stays down for the next (foreground) decode.
            hooks.close()
            self._abort_flag[0] = 0
            _log_state.aborting = False
            tokens.close()  # also when the caller stopped before the first chunk

    def _prompt_done(self) -> None:
        """The first chunk arrived: the prompt is evaluated, later evaluations are decode steps."""
        self._counting_prompt = False

    def prefill(
        self, messages: list[ChatMessage], settings: GenerationSettings, cancel: threading.Event
    ) -> int:
        """Evaluate the prompt `messages` gives and stop before the first answer token.

        One token is sampled and dropped (llama-cpp-python evaluates a prompt only on the
        way to a token); it is never evaluated, so the KV cache then holds exactly the
        prompt and the next generation with the same messages evaluates nothing new.
        """
        one = GenerationSettings(
            max_tokens=1,
            temperature=0.0,
            top_p=settings.top_p,
            top_k=settings.top_k,
            repeat_penalty=settings.repeat_penalty,
            seed=0,
            preemptible=settings.preemptible,
        )
        stream = self.stream_chat(messages, one, cancel)
        try:
            next(stream, None)
        finally:
            stream.close()
        return self.prompt_tokens_evaluated

    def close(self) -> None:
        self._sessions.clear()
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
