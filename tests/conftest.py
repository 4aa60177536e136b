"""Shared test set-up: offline Hugging Face caches and tiny LSG-BART configs."""

import importlib.util
import json
import os
import tempfile

# Remote code loaded from folders is copied into HF_MODULES_CACHE: keep it out of the user's home, and offline.
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lsg-bart-tests-hf-"))
os.environ["HF_HUB_OFFLINE"] = "1"
# Processes that the tests start together (torchrun, accelerate: gloo) talk over the loopback interface, not over
# the address the machine's host name resolves to.
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# The README's command runs the tests in pytest-xdist workers that share the cores: each worker, and each process
# a test starts, gets its share of the threads instead of all of them (which would make them take turns).
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
    torch.set_num_threads(THREADS)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)

from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration  # noqa: E402
from lsg_bart.tiny import build_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# tests/remote_code runs in a process of its own (`test_versions.py`), where the package is not imported: here its
# registration with the Auto classes would load folders with the package's code instead of their own copies.
collect_ignore = ["remote_code"]
PARITY = Path(__file__).resolve().parent / "fixtures" / "parity"
EXAMPLES = REPO / "examples"


def load_example(name, prefix="lsg_example_"):
    """An example script imported as a module named `prefix + name` (without running its main)."""
    spec = importlib.util.spec_from_file_location(f"{prefix}{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config(**overrides):
    """A 2-layer LSG-BART small enough for unit tests: d_model 32, 4 heads, blocks of 16."""
    settings = dict(
        vocab_size=120,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=1024,
        block_size=16,
        sparse_block_size=16,
        sparsity_factor=2,
        num_global_tokens=2,
        dropout=0.1,
        attention_dropout=0.1,
    )
    settings.update(overrides)
    if "max_position_embeddings" not in overrides:  # about 1024, a multiple of the block size
        settings["max_position_embeddings"] = -(-1024 // settings["block_size"]) * settings["block_size"]
    return LSGBartConfig(**settings)


def padded_batch(lengths, vocab_size=120, seed=0):
    """Right-padded `input_ids` and `attention_mask` with one row per length (pad id 1, eos 2 at the end)."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    input_ids = torch.full((len(lengths), width), 1, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(5, vocab_size, (length,), generator=generator)
        input_ids[row, 0], input_ids[row, length - 1] = 0, 2
        attention_mask[row, :length] = 1
    return input_ids, attention_mask


@pytest.fixture
def make_config():
    return tiny_config


def write_jsonl(path, rows):
    """`rows` (dicts) written to `path` as JSON lines; the path as a string."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny, randomly initialised LSG-BART summarisation checkpoint with its tokenizer, saved like a converted one
    (4,096 positions, blocks of 32, one global token). Read-only: tests write their outputs elsewhere."""
    path = tmp_path_factory.mktemp("tiny-lsg-bart")
    tokenizer = build_tokenizer(model_max_length=4096)
    config = tiny_config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        block_size=32,
        sparse_block_size=32,
        num_global_tokens=1,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    LSGBartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
