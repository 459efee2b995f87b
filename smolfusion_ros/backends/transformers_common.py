"""What the transformers back ends (LLM and VLM) share: device and dtype, and in-place streaming.

Both decode on the generating thread: transformers' TextIteratorStreamer hands every token to
another thread through a queue, which measured on an H200 made 64 tokens take 2.8 s instead
of 0.17 s for plain generate.

torch and transformers are not runtime dependencies of this package: install them on the
machine that uses these back ends (a CUDA build of torch on a GPU server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DTYPES = ("auto", "float32", "float16", "bfloat16")


def import_torch(error_type: type[Exception], what: str, alternative: str) -> tuple[Any, Any]:
    """(torch, transformers), or `error_type` naming what to install."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise error_type(
            f"the transformers {what} back end needs torch and transformers, which are not "
            f"installed ({exc.name} missing): pip install torch transformers (a CUDA build "
            f"of torch on a GPU server), or use the {alternative} back end"
        ) from exc
    return torch, transformers


def pick_device(torch: Any, device: str, dtype: str, n_threads: int = 0) -> tuple[str, Any]:
    """(device, torch dtype): CUDA when torch sees a GPU and `device` is "auto", else the CPU;
    bfloat16 on CUDA and float32 on the CPU unless `dtype` names one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    if n_threads > 0 and device == "cpu":
        torch.set_num_threads(n_threads)
    return device, torch_dtype


class InPlaceStreamer:
    """Incremental detokenisation on the generating thread, usable as a transformers
    streamer (put/end).

    With `skip_prompt`, the first put() (generate's prompt) is skipped. Text is released only
    when it does not end in a partial multi-byte character, so on_text never sees a broken
    character.
    """

    def __init__(
        self, tokenizer: Any, on_text: Callable[[str], None], skip_prompt: bool = True
    ) -> None:
        self._tokenizer = tokenizer
        self._on_text = on_text
        self._ids: list[int] = []
        self._released = 0
        self._prompt_seen = not skip_prompt

    def put(self, value: Any) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        if isinstance(value, int):
            self._ids.append(value)
        else:
            self._ids.extend(int(v) for v in value.reshape(-1).tolist())
        self._release(final=False)

    def end(self) -> None:
        self._release(final=True)

    def _release(self, final: bool) -> None:
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if len(text) <= self._released or (not final and text.endswith("\ufffd")):
            return
        piece, self._released = text[self._released :], len(text)
        self._on_text(piece)
