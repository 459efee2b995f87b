"""Build a tiny RANDOMLY INITIALISED SmolVLM-architecture model for the VLM back-end tests.

No VLM weights are reachable from the build machines, so the tests exercise the real back-end
code paths on a stand-in: transformers' Idefics3 (the SmolVLM class) with about 100k random
parameters, a SentencePiece tokenizer trained here, and the same model converted by llama.cpp's
own `convert_hf_to_gguf.py` into `model.gguf` + `mmproj.gguf`. Its answers are gibberish: it
proves shapes, prompts, streaming, threading and cancellation, not answer quality.

The converter and its gguf-py come from the llama-cpp-python source distribution on PyPI
(the same version as the installed runtime), downloaded once into a cache, never vendored.
Everything is cached on disk, keyed by this file's hash and the llama-cpp-python version.

Run directly to build and print the paths: `.venv/bin/python test/tiny_vlm.py`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"

# Tiny sizes: 64x64 images of 16x16 patches -> 16 patches -> 4 tokens after the pixel shuffle.
IMAGE_SIZE = 64
PATCH_SIZE = 16
SCALE_FACTOR = 2
VOCAB_SIZE = 400
MAX_GRID = 4  # <row_R_col_C> pieces for R, C in 1..MAX_GRID

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"

# SmolVLM's chat template, also accepting plain string content.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}"
    "{% endif %}{% for line in message['content'] %}{% if line['type'] == 'text' %}"
    "{{ line['text'] }}{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

_WORDS = [
    "the",
    "a",
    "robot",
    "sees",
    "person",
    "red",
    "green",
    "blue",
    "cup",
    "table",
    "chair",
    "door",
    "window",
    "light",
    "hand",
    "face",
    "smile",
    "holding",
    "looking",
    "room",
    "kitchen",
    "office",
    "outside",
    "tree",
    "car",
    "dog",
    "cat",
    "book",
    "phone",
    "bottle",
    "sign",
    "text",
    "left",
    "right",
    "front",
    "behind",
    "near",
    "far",
    "one",
    "two",
    "three",
    "small",
    "large",
    "bright",
    "dark",
    "open",
    "closed",
    "is",
    "are",
    "there",
    "here",
    "what",
    "where",
    "who",
    "how",
    "this",
    "that",
    "with",
    "on",
    "in",
    "at",
    "of",
    "and",
    "to",
    "wearing",
    "shirt",
    "hat",
    "glasses",
]


@dataclass(frozen=True)
class TinyVLM:
    """Paths of one built tiny model."""

    hf_dir: Path  # transformers format (config, safetensors, processor, tokenizer)
    model_gguf: Path  # text model, converted by llama.cpp
    mmproj_gguf: Path  # vision projector (idefics3), converted by llama.cpp


def cache_root() -> Path:
    override = os.environ.get("SMOLFUSION_TEST_ASSETS")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "smolfusion_ros" / "test-assets"


def _builder_hash() -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(LLAMA_CPP_PYTHON_VERSION.encode())
    return digest.hexdigest()[:16]


def llama_cpp_source(root: Path | None = None) -> Path:
    """llama.cpp's converter directory from the llama-cpp-python sdist (cached by version)."""
    root = root or cache_root()
    target = root / f"llama-cpp-python-{LLAMA_CPP_PYTHON_VERSION}"
    converter_dir = target / "llama.cpp"
    if (converter_dir / "convert_hf_to_gguf.py").is_file() and (target / ".complete").is_file():
        return converter_dir
    target.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    sdist = target / name
    if not sdist.is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
                "-d",
                str(target),
            ],
            check=True,
        )
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "gguf-py/", "conversion/")
    staging = Path(tempfile.mkdtemp(dir=target, prefix="extract-"))
    with tarfile.open(sdist) as archive:
        members = [
            member
            for member in archive.getmembers()
            if member.name.startswith(prefix) and member.name[len(prefix) :].startswith(wanted)
        ]
        for member in members:
            member.name = member.name[len(prefix) :]
        archive.extractall(staging, members=members, filter="data")
    shutil.rmtree(converter_dir, ignore_errors=True)
    os.replace(staging, converter_dir)
    (target / ".complete").write_text(LLAMA_CPP_PYTHON_VERSION)
    # The sdist (76 MB) is not needed once the converter is extracted.
    sdist.unlink(missing_ok=True)
    return converter_dir


def _train_tokenizer(out_dir: Path) -> Path:
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    sentences = [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12))) + rng.choice(".?!")
        for _ in range(3000)
    ]
    user_symbols = [
        IMAGE_TOKEN,
        FAKE_IMAGE_TOKEN,
        GLOBAL_IMAGE_TOKEN,
        END_OF_UTTERANCE,
        "<|im_start|>",
        "\n\n",
        "\n",
        *(f"<row_{r}_col_{c}>" for r in range(1, MAX_GRID + 1) for c in range(1, MAX_GRID + 1)),
    ]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=1.0,
        user_defined_symbols=user_symbols,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path = out_dir / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def _build_hf(out_dir: Path) -> None:
    import sentencepiece as spm
    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from transformers.models.llama.configuration_llama import LlamaConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    spm_path = _train_tokenizer(out_dir)
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    vocab = sp.get_piece_size()

    # transformers 5 builds its (tokenizers-backed) Llama tokenizer from tokenizer.model.
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": END_OF_UTTERANCE,
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "add_bos_token": False,
                "add_eos_token": False,
                "legacy": False,
            }
        ),
        encoding="utf-8",
    )
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [FAKE_IMAGE_TOKEN, IMAGE_TOKEN, END_OF_UTTERANCE]}
    )
    image_token_id = sp.piece_to_id(IMAGE_TOKEN)
    eos_id = sp.piece_to_id(END_OF_UTTERANCE)
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == image_token_id

    text_config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=eos_id,
        pad_token_id=3,
    )
    text_config.architectures = ["VLlama3ForCausalLM"]
    vision_config = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    config = Idefics3Config(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        scale_factor=SCALE_FACTOR,
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )
    config.architectures = ["Idefics3ForConditionalGeneration"]
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Larger random weights than the default init, so the image visibly steers the output.
        for name, param in model.named_parameters():
            if param.dim() >= 2 and "norm" not in name:
                param.normal_(0.0, 0.3)
        # Never end early: a zero output row keeps the end and control tokens below the random
        # logits of ordinary pieces, so generations run to max_tokens (tests cancel mid-way).
        lm_head = model.lm_head.weight
        for token_id in range(vocab):
            if sp.is_control(token_id) or sp.is_unknown(token_id) or sp.is_byte(token_id):
                lm_head[token_id].zero_()
        for piece in (END_OF_UTTERANCE, IMAGE_TOKEN, FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN):
            lm_head[sp.piece_to_id(piece)].zero_()
        for r in range(1, MAX_GRID + 1):
            for c in range(1, MAX_GRID + 1):
                lm_head[sp.piece_to_id(f"<row_{r}_col_{c}>")].zero_()
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = 3
    model.generation_config.bos_token_id = 1
    model.save_pretrained(out_dir, safe_serialization=True)

    image_processor = Idefics3ImageProcessor(
        do_resize=True,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=True,
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    image_seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    # The converter copies the chat template from tokenizer_config.json into the GGUF (the
    # llama.cpp multimodal handler refuses a model without one); keep it there explicitly.
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["chat_template"] = CHAT_TEMPLATE
    tokenizer_config["add_bos_token"] = False
    config_path.write_text(json.dumps(tokenizer_config, indent=2), encoding="utf-8")


def _convert(converter_dir: Path, hf_dir: Path, out: Path, mmproj: bool) -> None:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.pop("NO_LOCAL_GGUF", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(converter_dir / "gguf-py"), str(converter_dir), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    args = [
        sys.executable,
        str(converter_dir / "convert_hf_to_gguf.py"),
        str(hf_dir),
        "--outfile",
        str(out),
        "--outtype",
        "f16" if mmproj else "f32",
    ]
    if mmproj:
        args.append("--mmproj")
    result = subprocess.run(args, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"convert_hf_to_gguf.py failed ({'mmproj' if mmproj else 'text'}):\n"
            + result.stdout[-3000:]
            + result.stderr[-6000:]
        )
    if not out.is_file():
        # Some converter versions prefix the mmproj output name.
        prefixed = out.with_name("mmproj-" + out.name)
        if prefixed.is_file():
            os.replace(prefixed, out)
    if not out.is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py wrote no {out}")


def build_tiny_vlm(root: Path | None = None) -> TinyVLM:
    """Build (or reuse from the cache) the tiny random model in both formats."""
    root = root or cache_root()
    target = root / f"tiny-vlm-{_builder_hash()}"
    built = TinyVLM(target / "hf", target / "model.gguf", target / "mmproj.gguf")
    if (target / ".complete").is_file():
        return built
    converter_dir = llama_cpp_source(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix="tiny-vlm-build-"))
    try:
        _build_hf(staging / "hf")
        _convert(converter_dir, staging / "hf", staging / "model.gguf", mmproj=False)
        _convert(converter_dir, staging / "hf", staging / "mmproj.gguf", mmproj=True)
        (staging / ".complete").write_text("ok")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return built


if __name__ == "__main__":
    import time

    start = time.monotonic()
    tiny = build_tiny_vlm()
    print(f"built in {time.monotonic() - start:.1f} s")
    print(tiny)
