"""Bad inputs, one row a case (issue 13): the config, model inputs, the converter, the fine-tuning examples and
summarize.py.

Each row runs in a folder of its own (the current directory and $HOME during the row) holding copies of a tiny
BART source, a tiny LSG-BART checkpoint and data files, and asserts three things: the error's type (`SystemExit`
with status 2 and a one-line message for the command lines), that the message names the culprit (the field,
argument or path, and the bad value), and that no file in that folder was written, changed or removed.
"""

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import datasets
import pytest
import torch
import transformers
from conftest import load_example
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from lsg_bart import LSGBartConfig, LSGBartForCausalLM, LSGBartForConditionalGeneration
from lsg_bart.convert import convert_checkpoint
from lsg_bart.convert import main as convert_main
from lsg_bart.tiny import build_tiny_bart, build_tokenizer, sample_text

SMALL_LSG = '{"block_size": 16, "sparse_block_size": 16, "num_global_tokens": 2}'


run_summarization = load_example("run_summarization", "lsg_bad_inputs_")
run_classification = load_example("run_classification", "lsg_bad_inputs_")
summarize = load_example("summarize", "lsg_bad_inputs_")


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """What each row's folder starts with: `src/` (a tiny BART, 128 positions), `ckpt/` (a tiny LSG-BART
    summarisation checkpoint, 4,096 positions, blocks of 32), `data/` (summarisation and classification files)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    build_tiny_bart(root / "src", max_position_embeddings=128, seed=1)
    tokenizer = build_tokenizer(model_max_length=4096)
    config = LSGBartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=4096,
        block_size=32, sparse_block_size=32, num_global_tokens=1,
    )  # fmt: skip
    torch.manual_seed(0)
    LSGBartForConditionalGeneration(config).save_pretrained(root / "ckpt")
    tokenizer.save_pretrained(root / "ckpt")
    data = root / "data"
    data.mkdir()
    rows = [
        {"article": sample_text(60, seed), "abstract": sample_text(8, 100 + seed), "label": "ab"[seed % 2]}
        for seed in range(4)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (data / "broken.jsonl").write_text('{"article": "a", "abstract": "b"}\n{oops\n')
    (data / "doc.txt").write_text(sample_text(50, 7))
    (data / "binary.txt").write_bytes(b"\xff\xfe\x00binary")
    return root


@pytest.fixture(scope="module")
def model(originals):
    return LSGBartForConditionalGeneration.from_pretrained(originals / "ckpt").eval()


@dataclass
class Context:
    """What a row's call gets: its folder (also the current directory and $HOME's parent) and the loaded model."""

    work: Path
    model: LSGBartForConditionalGeneration


@dataclass
class Row:
    """A bad input: `call(context)` must raise `error` with a message that contains each of `words`."""

    id: str
    call: Callable
    error: type
    words: tuple
    prepare: Callable = field(default=None)  # sets the folder up (before the snapshot)


def snapshot(folder):
    """Every file and folder under `folder`, hidden ones too: relative path -> sha256 (None for a folder)."""
    return {
        str(path.relative_to(folder)): None if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


# ---------------------------------------------------------------------------------------------------------------
# Row helpers
# ---------------------------------------------------------------------------------------------------------------


def config_json_with(**values):
    """A `prepare` that writes `bad/`: the checkpoint with `values` in its config.json."""

    def prepare(work):
        shutil.copytree(work / "ckpt", work / "bad")
        config = json.loads((work / "bad" / "config.json").read_text())
        config.update(values)
        (work / "bad" / "config.json").write_text(json.dumps(config))

    return prepare


def truncated_weights(work):
    """`bad/`: the checkpoint with its model.safetensors cut to 1,000 bytes (a download or copy that stopped)."""
    shutil.copytree(work / "ckpt", work / "bad")
    with open(work / "bad" / "model.safetensors", "r+b") as f:
        f.truncate(1000)


def unrelated_files(work):
    (work / "notes").mkdir()
    (work / "notes" / "notes.txt").write_text("mine")
    (work / "notes" / "thesis.tex").write_text("mine too")


def checkpoint_plus(work):
    shutil.copytree(work / "ckpt", work / "out")
    (work / "out" / "extra.txt").write_text("results I want to keep")


def not_bart(work):
    (work / "t5").mkdir()
    (work / "t5" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (work / "t5" / "model.safetensors").write_text("weights")


def models_folder(work):
    """`models/` holding a copy of the source and a file of the user's: the folder that holds the source."""
    (work / "models").mkdir()
    shutil.copytree(work / "src", work / "models" / "src")
    (work / "models" / "todo.txt").write_text("mine")


def a_file(work):
    (work / "taken").write_text("a file, not a folder")


def set_attribute(name, value):
    """Set a field of a loaded config; the row also checks that the config kept its old value."""

    def call(context):
        config = AutoConfig.from_pretrained("ckpt", trust_remote_code=True)
        before = getattr(config, name)
        try:
            setattr(config, name, value)
        finally:
            assert getattr(config, name) == before

    return call


def encoder(**inputs):
    return lambda context: context.model.model.encoder(**inputs)


def convert(*argv):
    """`lsg-bart-convert` with the tiny source and small LSG settings, then `argv` (later flags win)."""
    return lambda context: convert_main(
        ["--initial_model", "src", "--model_name", "out", "--max_sequence_length", "256", "--model_kwargs",
         SMALL_LSG, *argv]
    )  # fmt: skip


SUMMARIZATION = [
    "--model_name_or_path", "ckpt", "--train_file", "data/train.jsonl", "--text_column", "article",
    "--summary_column", "abstract", "--max_source_length", "128", "--max_target_length", "16", "--do_train",
    "--output_dir", "out", "--max_steps", "1", "--per_device_train_batch_size", "2", "--use_cpu",
    "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
]  # fmt: skip
CLASSIFICATION = [
    "--model_name_or_path", "ckpt", "--train_file", "data/train.jsonl", "--text_column", "article",
    "--max_seq_length", "128", "--do_train", "--output_dir", "out", "--max_steps", "1",
    "--per_device_train_batch_size", "2", "--use_cpu", "--report_to", "none", "--save_strategy", "no",
    "--disable_tqdm", "true",
]  # fmt: skip


def summarization(*argv):
    return lambda context: run_summarization.main(SUMMARIZATION + list(argv))


def classification(*argv):
    return lambda context: run_classification.main(CLASSIFICATION + list(argv))


def summarize_cli(*argv):
    return lambda context: summarize.main(["--model", "ckpt", "--max_new_tokens", "4", *argv])


ROWS = [
    # -- the config: every way of setting an LSG field (LSGBartConfig validates them all) ------------------------
    Row("config-constructor-sparsity-type", lambda c: LSGBartConfig(sparsity_type="foo"), ValueError,
        ("`sparsity_type`='foo'", "norm, pooling")),
    Row("config-from-pretrained-kwargs", lambda c: LSGBartConfig.from_pretrained("ckpt", sparsity_type="Norm"),
        ValueError, ("`sparsity_type`='Norm'",)),
    Row("autoconfig-kwargs-num-global-tokens-0",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, num_global_tokens=0), ValueError,
        ("`num_global_tokens`=0", "1 to 512")),
    Row("autoconfig-kwargs-num-global-tokens-600",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, num_global_tokens=600), ValueError,
        ("`num_global_tokens`=600",)),
    Row("autoconfig-kwargs-sparse-block-size-negative",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, sparse_block_size=-5), ValueError,
        ("`sparse_block_size`=-5",)),
    Row("autoconfig-kwargs-block-size-0",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, block_size=0), ValueError,
        ("`block_size`=0", "positive")),
    Row("autoconfig-kwargs-sparsity-factor-0",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, sparsity_factor=0), ValueError,
        ("`sparsity_factor`=0",)),
    Row("autoconfig-kwargs-block-size-not-dividing",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, sparsity_type="pooling", block_size=48),
        ValueError, ("`block_size`=48", "max_position_embeddings=4096", "32 and 64")),
    Row("config-block-size-of-wrong-type", lambda c: LSGBartConfig(block_size="big"), ValueError,
        ("`block_size`='big'", "an integer")),
    Row("config-attribute-after-loading", set_attribute("sparsity_type", "foo"), ValueError,
        ("`sparsity_type`='foo'",)),
    Row("config-attribute-block-size-after-loading", set_attribute("block_size", 0), ValueError,
        ("`block_size`=0",)),
    Row("config-json-value", lambda c: AutoConfig.from_pretrained("bad", trust_remote_code=True), ValueError,
        ("`sparsity_factor`=0",), config_json_with(sparsity_factor=0)),
    # Bounds: what can run. A block longer than the position table only allocates padding (2**40 asks for terabytes),
    # hashing rounds cost a pass each, and the generator takes seeds below 2**64 (each layer adds its index).
    Row("config-constructor-block-size-huge", lambda c: LSGBartConfig(block_size=2**40), ValueError,
        ("`block_size`=1099511627776", "at most max_position_embeddings=1024")),
    Row("config-from-pretrained-kwargs-sparse-block-size-huge",
        lambda c: LSGBartConfig.from_pretrained("ckpt", sparse_block_size=2**20), ValueError,
        ("`sparse_block_size`=1048576", "at most max_position_embeddings=4096")),
    Row("autoconfig-kwargs-block-size-huge",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, block_size=2**20), ValueError,
        ("`block_size`=1048576", "at most max_position_embeddings=4096")),
    Row("config-json-block-size-huge", lambda c: AutoConfig.from_pretrained("bad", trust_remote_code=True),
        ValueError, ("`block_size`=1099511627776",), config_json_with(block_size=2**40)),
    Row("config-attribute-block-size-huge-after-loading", set_attribute("block_size", 2**20), ValueError,
        ("`block_size`=1048576", "at most max_position_embeddings=4096")),
    Row("config-attribute-sparse-block-size-huge-after-loading", set_attribute("sparse_block_size", 8192),
        ValueError, ("`sparse_block_size`=8192", "at most max_position_embeddings=4096")),
    Row("config-constructor-lsh-rounds-huge", lambda c: LSGBartConfig(lsh_num_pre_rounds=10**9), ValueError,
        ("`lsh_num_pre_rounds`=1000000000", "0 to 16")),
    Row("autoconfig-kwargs-lsh-rounds-negative",
        lambda c: AutoConfig.from_pretrained("ckpt", trust_remote_code=True, lsh_num_pre_rounds=-1), ValueError,
        ("`lsh_num_pre_rounds`=-1",)),
    Row("config-attribute-lsh-rounds-after-loading", set_attribute("lsh_num_pre_rounds", 17), ValueError,
        ("`lsh_num_pre_rounds`=17",)),
    Row("config-constructor-lsh-seed-too-large", lambda c: LSGBartConfig(lsh_seed=2**64), ValueError,
        ("`lsh_seed`=18446744073709551616", "0 to 2**63 - 1")),
    Row("config-json-lsh-seed-negative", lambda c: AutoConfig.from_pretrained("bad", trust_remote_code=True),
        ValueError, ("`lsh_seed`=-1",), config_json_with(lsh_seed=-1)),
    Row("config-attribute-lsh-seed-after-loading", set_attribute("lsh_seed", 2**63), ValueError,
        ("`lsh_seed`=9223372036854775808",)),
    Row("model-from-pretrained-kwargs",
        lambda c: AutoModelForSeq2SeqLM.from_pretrained("ckpt", trust_remote_code=True, sparsity_type="lsh2"),
        ValueError, ("`sparsity_type`='lsh2'",)),
    # -- model inputs -------------------------------------------------------------------------------------------
    Row("mask-shorter-than-input", encoder(input_ids=torch.tensor([[0, 5, 6, 2]]), attention_mask=torch.ones(1, 3)),
        ValueError, ("`attention_mask` has shape (1, 3)", "`input_ids` has shape (1, 4)")),
    Row("mask-1d", encoder(input_ids=torch.tensor([[0, 5, 6, 2]]), attention_mask=torch.ones(4)), ValueError,
        ("`attention_mask` has shape (4,)",)),
    Row("mask-shape-through-the-seq2seq-model",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 6, 2]]), attention_mask=torch.ones(1, 5)), ValueError,
        ("`attention_mask` has shape (1, 5)", "(1, 4)")),
    Row("empty-input", encoder(input_ids=torch.zeros(1, 0, dtype=torch.long)), ValueError,
        ("`input_ids` is empty", "(1, 0)")),
    Row("id-above-vocabulary", encoder(input_ids=torch.tensor([[0, 400, 2]])), ValueError,
        ("`input_ids`", "token id 400", "0 to 399")),
    Row("negative-id", encoder(input_ids=torch.tensor([[0, -1, 2]])), ValueError, ("`input_ids`", "token id -1")),
    Row("empty-batch-longer-than-two-blocks", encoder(input_ids=torch.zeros(0, 100, dtype=torch.long)), ValueError,
        ("`input_ids` is empty", "(0, 100)")),
    Row("ids-int16", encoder(input_ids=torch.tensor([[0, 5, 2]], dtype=torch.int16)), ValueError,
        ("`input_ids` has dtype torch.int16", "torch.long")),
    Row("ids-uint8", encoder(input_ids=torch.tensor([[0, 5, 2]], dtype=torch.uint8)), ValueError,
        ("`input_ids` has dtype torch.uint8",)),
    Row("ids-float", encoder(input_ids=torch.tensor([[0.0, 5.0, 2.0]])), ValueError,
        ("`input_ids` has dtype torch.float32",)),
    Row("embeddings-of-the-wrong-width", encoder(inputs_embeds=torch.zeros(1, 5, 31)), ValueError,
        ("`inputs_embeds` has shape (1, 5, 31)", "d_model=32")),
    Row("embeddings-float64-on-a-float32-model", encoder(inputs_embeds=torch.zeros(1, 5, 32, dtype=torch.float64)),
        ValueError, ("`inputs_embeds` has dtype torch.float64", "torch.float32")),
    Row("input-longer-than-the-positions", encoder(input_ids=torch.zeros(1, 4097, dtype=torch.long)), ValueError,
        ("`input_ids` has 4097 tokens", "max_position_embeddings=4096", "--max_sequence_length")),
    Row("decoder-ids-longer-than-the-positions",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), decoder_input_ids=torch.zeros(1, 4097, dtype=torch.long)),
        ValueError, ("`decoder_input_ids` has 4097 tokens", "max_position_embeddings=4096")),
    Row("decoder-embeddings-of-the-wrong-width",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), decoder_inputs_embeds=torch.zeros(1, 2, 16)),
        ValueError, ("`decoder_inputs_embeds` has shape (1, 2, 16)", "d_model=32")),
    Row("decoder-ids-float",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), decoder_input_ids=torch.tensor([[2.0, 0.0]])),
        ValueError, ("`decoder_input_ids` has dtype torch.float32",)),
    Row("decoder-id-above-vocabulary",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), decoder_input_ids=torch.tensor([[2, 400]])),
        ValueError, ("`decoder_input_ids` holds token id 400", "0 to 399")),
    Row("labels-longer-than-the-positions",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), labels=torch.zeros(1, 4097, dtype=torch.long)),
        ValueError, ("`labels` has 4097 tokens", "max_position_embeddings=4096")),
    Row("labels-float", lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), labels=torch.tensor([[5.0, 2.0]])),
        ValueError, ("`labels` has dtype torch.float32",)),
    Row("labels-above-vocabulary",
        lambda c: c.model(input_ids=torch.tensor([[0, 5, 2]]), labels=torch.tensor([[5, -100, 400]])), ValueError,
        ("`labels` holds token id 400", "0 to 399, or -100")),
    Row("causal-lm-ids-longer-than-the-positions",
        lambda c: LSGBartForCausalLM.from_pretrained("ckpt")(input_ids=torch.zeros(1, 4097, dtype=torch.long)),
        ValueError, ("`input_ids` has 4097 tokens", "max_position_embeddings=4096")),
    Row("generate-max-new-tokens-past-the-positions",
        lambda c: c.model.generate(torch.tensor([[0, 5, 2]]), max_new_tokens=5000), ValueError,
        ("`max_new_tokens`=5000", "max_position_embeddings=4096", "at most 4096 new tokens")),
    Row("generate-max-length-past-the-positions",
        lambda c: c.model.generate(torch.tensor([[0, 5, 2]]), max_length=4098), ValueError,
        ("`max_length`=4098", "max_position_embeddings=4096", "at most 4097")),
    Row("resize-position-embeddings", lambda c: c.model.resize_position_embeddings(8000), NotImplementedError,
        ("max_position_embeddings=4096", "lsg-bart-convert", "--resize_lsg --max_sequence_length 8000")),
    Row("resize-position-embeddings-to-a-block-multiple", lambda c: c.model.resize_position_embeddings(8001),
        NotImplementedError, ("--max_sequence_length 8032` (a multiple of block_size=32)",)),
    Row("ids-and-embeddings", encoder(input_ids=torch.tensor([[0, 2]]), inputs_embeds=torch.zeros(1, 2, 32)),
        ValueError, ("`input_ids`", "`inputs_embeds`")),
    Row("neither-ids-nor-embeddings", encoder(), ValueError, ("exactly one of `input_ids` and `inputs_embeds`",)),
    Row("truncated-weights", lambda c: LSGBartForConditionalGeneration.from_pretrained("bad"), OSError,
        ("bad/model.safetensors",), truncated_weights),
    Row("truncated-weights-remote-code",
        lambda c: AutoModelForSeq2SeqLM.from_pretrained("bad", trust_remote_code=True), OSError,
        ("bad/model.safetensors",), truncated_weights),
    # -- the converter ------------------------------------------------------------------------------------------
    Row("convert-empty-output-name", convert("--model_name", ""), SystemExit, ("--model_name is empty",)),
    Row("convert-output-is-cwd", convert("--model_name", ".", "--overwrite"), SystemExit,
        ("--model_name '.' is the current directory",)),
    Row("convert-output-contains-cwd", convert("--model_name", "..", "--overwrite"), SystemExit,
        ("--model_name '..' contains the current directory",)),
    Row("convert-output-is-home", convert("--model_name", "home", "--overwrite"), SystemExit,
        ("--model_name 'home' is the home directory",)),
    Row("convert-output-is-root", convert("--model_name", "/", "--overwrite"), SystemExit,
        ("--model_name '/' is the root folder",)),
    Row("convert-output-is-source", convert("--model_name", "src", "--overwrite"), SystemExit,
        ("--model_name 'src' is the source folder 'src'",)),
    Row("convert-output-inside-source", convert("--model_name", "src/lsg", "--overwrite"), SystemExit,
        ("--model_name 'src/lsg' is inside the source folder",)),
    Row("convert-output-is-the-source-parent",
        convert("--initial_model", "models/src", "--model_name", "models", "--overwrite"), SystemExit,
        ("--model_name 'models' contains the source 'models/src'",), models_folder),
    Row("convert-overwrite-unrelated-files", convert("--model_name", "notes", "--overwrite"), SystemExit,
        ("--overwrite would remove everything in 'notes' (notes.txt, thesis.tex)", "not part of a BART"),
        unrelated_files),
    Row("convert-overwrite-checkpoint-and-more",
        lambda c: convert_checkpoint("src", "out", 256, model_kwargs=SMALL_LSG, overwrite=True), FileExistsError,
        ("'out'", "extra.txt is not part of a BART / LSG-BART checkpoint"), checkpoint_plus),
    Row("convert-overwrite-another-model-type", convert("--model_name", "t5", "--overwrite"), SystemExit,
        ("'t5'", "model_type='t5'"), not_bart),
    Row("convert-non-empty-without-overwrite", convert("--model_name", "ckpt"), SystemExit,
        ("'ckpt' is not empty", "--overwrite")),
    Row("convert-output-is-a-file", convert("--model_name", "taken", "--overwrite"), SystemExit,
        ("'taken' exists and is not a folder",), a_file),
    Row("convert-missing-source", convert("--initial_model", "missing"), SystemExit,
        ("cannot read a model config from 'missing': no such local folder",)),
    Row("convert-source-not-bart", convert("--initial_model", "t5"), SystemExit,
        ("'t5' is not a BART checkpoint (model_type='t5')",), not_bart),
    Row("convert-model-kwargs-sparsity-type", convert("--model_kwargs", '{"sparsity_type": "foo"}'), SystemExit,
        ("`sparsity_type`='foo'",)),
    Row("convert-model-kwargs-block-size-0", lambda c: convert_checkpoint("src", "out", 256, model_kwargs={
        "block_size": 0}), ValueError, ("`block_size`=0",)),
    Row("convert-model-kwargs-unknown-field", convert("--model_kwargs", '{"block_sise": 16}'), SystemExit,
        ("unknown config field(s) 'block_sise'",)),
    Row("convert-model-kwargs-not-json", convert("--model_kwargs", "{oops"), SystemExit,
        ("--model_kwargs is not valid JSON", "'{oops'")),
    Row("convert-length-0", convert("--max_sequence_length", "0"), SystemExit, ("max_sequence_length=0",)),
    Row("convert-length-not-a-block-multiple", convert("--max_sequence_length", "200"), SystemExit,
        ("max_sequence_length=200 is not a multiple of block_size=16", "192 or 208")),
    Row("convert-unknown-architecture", convert("--architecture", "BartForTokenClassification"), SystemExit,
        ("unknown architecture 'BartForTokenClassification'", "BartForCausalLM")),
    Row("convert-dtype", convert("--dtype", "int8"), SystemExit, ("--dtype", "'int8'")),
    # -- the fine-tuning examples: refused before the data are read, training starts or a file is written ----------
    Row("summarization-sparsity-type", summarization("--model_kwargs", '{"sparsity_type": "foo"}'), ValueError,
        ("`sparsity_type`='foo'", "norm, pooling")),
    Row("summarization-block-size-0", summarization("--model_kwargs", '{"block_size": 0}'), ValueError,
        ("`block_size`=0",)),
    Row("summarization-block-size-negative",
        summarization("--model_kwargs", '{"block_size": -32, "sparse_block_size": 0}'), ValueError,
        ("`block_size`=-32",)),
    Row("summarization-block-size-not-dividing",
        summarization("--model_kwargs", '{"sparsity_type": "pooling", "block_size": 48}'), ValueError,
        ("`block_size`=48", "32 and 64")),
    Row("classification-num-global-tokens-0", classification("--model_kwargs", '{"num_global_tokens": 0}'),
        ValueError, ("`num_global_tokens`=0",)),
    Row("summarization-model-kwargs-not-json", summarization("--model_kwargs", '{"block_size": }'), ValueError,
        ("--model_kwargs is not valid JSON", '{"block_size": }')),
    Row("summarization-model-kwargs-not-an-object", summarization("--model_kwargs", "[64]"), ValueError,
        ("--model_kwargs must be a JSON object", "[64]")),
    Row("summarization-model-kwargs-unknown-field", summarization("--model_kwargs", '{"block_sise": 64}'),
        ValueError, ("--model_kwargs: 'block_sise' is not a field of LSGBartConfig",)),
    Row("summarization-missing-checkpoint", summarization("--model_name_or_path", "nowhere/model"), OSError,
        ("--model_name_or_path 'nowhere/model'", "config.json")),
    Row("summarization-missing-train-file", summarization("--train_file", "data/missing.jsonl"), FileNotFoundError,
        ("--train_file 'data/missing.jsonl' is not a file",)),
    Row("summarization-train-file-format", summarization("--train_file", "data/doc.txt"), ValueError,
        ("--train_file must be a .json, .jsonl or .csv file", "'data/doc.txt'")),
    Row("summarization-train-file-broken-json", summarization("--train_file", "data/broken.jsonl"), ValueError,
        ("--train_file 'data/broken.jsonl' cannot be read as JSON lines",)),
    Row("summarization-unknown-column", summarization("--text_column", "body"), ValueError,
        ("--text_column='body' is not a column", "article, abstract, label")),
    Row("summarization-max-source-length-0", summarization("--max_source_length", "0"), ValueError,
        ("--max_source_length must be a positive integer, got 0",)),
    Row("summarization-max-steps-not-a-number", summarization("--max_steps", "many"), SystemExit,
        ("--max_steps", "'many'")),
    Row("classification-unknown-label-column", classification("--label_column", "topic"), ValueError,
        ("--label_column='topic'", "article, abstract, label")),
    Row("classification-max-seq-length-negative", classification("--max_seq_length", "-1"), ValueError,
        ("--max_seq_length must be a positive integer, got -1",)),
    # -- summarize.py -------------------------------------------------------------------------------------------
    Row("summarize-missing-file", summarize_cli("data/missing.txt"), SystemExit,
        ("'data/missing.txt' is not a file",)),
    Row("summarize-folder-as-file", summarize_cli("data"), SystemExit, ("'data' is not a file",)),
    Row("summarize-binary-file", summarize_cli("data/binary.txt"), SystemExit,
        ("'data/binary.txt' is not UTF-8 text",)),
    Row("summarize-missing-checkpoint", summarize_cli("data/doc.txt", "--model", "nowhere/model"), SystemExit,
        ("--model 'nowhere/model': cannot load a checkpoint",)),
    Row("summarize-truncated-weights", summarize_cli("data/doc.txt", "--model", "bad"), SystemExit,
        ("--model 'bad'", "bad/model.safetensors"), truncated_weights),
    Row("summarize-batch-size-0", summarize_cli("data/doc.txt", "--batch_size", "0"), SystemExit,
        ("--batch_size must be a positive integer, got 0",)),
    Row("summarize-num-beams-0", summarize_cli("data/doc.txt", "--num_beams", "0"), SystemExit,
        ("--num_beams must be a positive integer, got 0",)),
    Row("summarize-min-above-max", summarize_cli("data/doc.txt", "--min_new_tokens", "9"), SystemExit,
        ("--min_new_tokens must be from 0 to --max_new_tokens=4, got 9",)),
    Row("summarize-output-dir-is-a-file", summarize_cli("data/doc.txt", "--output_dir", "data/doc.txt"),
        SystemExit, ("--output_dir 'data/doc.txt' exists and is not a folder",)),
    Row("summarize-unknown-device", summarize_cli("data/doc.txt", "--device", "gpu0"), SystemExit,
        ("--device 'gpu0' is not a device",)),
]


@pytest.fixture
def quiet_logging():
    """The examples set up logging as command-line programs do; put it back for the other tests."""
    verbosities = (transformers.logging.get_verbosity(), datasets.logging.get_verbosity())
    yield
    transformers.logging.set_verbosity(verbosities[0])
    transformers.logging.reset_format()
    datasets.logging.set_verbosity(verbosities[1])


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in ROWS])
def test_bad_input(row, originals, model, tmp_path, monkeypatch, capsys, quiet_logging):
    for name in ("src", "ckpt", "data"):
        shutil.copytree(originals / name, tmp_path / name)
    (tmp_path / "home").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if row.prepare is not None:
        row.prepare(tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()

    with pytest.raises(row.error) as raised:
        row.call(Context(tmp_path, model))

    if row.error is SystemExit:
        assert raised.value.code == 2
        message = capsys.readouterr().err
        assert len(message.splitlines()) == 1, message  # one line, no usage block
    else:
        assert type(raised.value) is row.error
        message = str(raised.value)
    for word in row.words:
        assert word in message, (word, message)
    assert snapshot(tmp_path) == before  # nothing written, changed or removed
