"""LSG-BART as users meet it: checkpoint folders loaded with `trust_remote_code=True` under the installed
transformers, using only the remote-code files, never the installed package.

The version matrix (`.ci/version_matrix.sh`) runs this folder alone under every supported Python, torch and
transformers, with `--confcutdir` so that the suite's conftest (which imports `lsg_bart`) is not loaded, in venvs
without `lsg_bart`. The main suite runs it too, in a process of its own (`tests/test_versions.py`): once imported,
the package registers itself with the Auto classes, and its code would be loaded instead of the folders' copies.
Self-contained on purpose: no conftest of its own.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="lsg-bart-remote-code-hf-"))
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

REPO = Path(__file__).resolve().parents[2]
PARITY = REPO / "tests" / "fixtures" / "parity"
PACKAGE = REPO / "lsg_bart"
# `lsg_bart.REMOTE_CODE_FILES`, read from the source: the package must not be imported here.
REMOTE_CODE_FILES = next(
    ast.literal_eval(node.value)
    for node in ast.parse((PACKAGE / "__init__.py").read_text()).body
    if isinstance(node, ast.Assign) and node.targets[0].id == "REMOTE_CODE_FILES"
)
LEGACY_CASES = sorted(p.name for p in PARITY.iterdir() if (p / "expected.safetensors").exists())
TOLERANCE = 1e-4
AUTO_CLASSES = {
    AutoModel: "LSGBartModel",
    AutoModelForSeq2SeqLM: "LSGBartForConditionalGeneration",
    AutoModelForSequenceClassification: "LSGBartForSequenceClassification",
    AutoModelForQuestionAnswering: "LSGBartForQuestionAnswering",
    AutoModelForCausalLM: "LSGBartForCausalLM",
}
# The exchange's sub-folder of checkpoints written by the converter, one per environment.
CONVERTED = "converted"
TOKENIZER_TEXTS = [
    "The model reads long documents and writes short summaries.",
    " A leading space,  two spaces,\ttabs\nand new lines.",
    "Ünïcödé, emoji 🙂, CJK 長い文書, digits 12345 and a <mask> token.",
]
# Heads that a summarisation checkpoint does not have, so they are initialised when loaded.
NEW_HEAD_KEYS = ("classification_head.", "qa_outputs.")


def assert_runs_copied_code(model):
    assert not type(model).__module__.startswith("lsg_bart"), "must run the code copied into the folder"


def parity_inputs():
    """Two rows (one right-padded) that fit the `norm` case and the checkpoints made from it."""
    return load_file(PARITY / "norm" / "inputs.safetensors")


def upgrade_folder(case, destination):
    """What a user upgrading an old checkpoint does: drop the remote-code files into its folder."""
    shutil.copytree(PARITY / case, destination)
    for name in REMOTE_CODE_FILES:
        shutil.copy(PACKAGE / name, destination / name)
    return destination


@pytest.fixture
def legacy_folder(tmp_path):
    """The `norm` parity case (a legacy checkpoint with its tokenizer) with this project's remote-code files."""
    return upgrade_folder("norm", tmp_path / "legacy")


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    """A new-style checkpoint (`model_type: lsg_bart`) written by `save_pretrained` under this transformers."""
    source = upgrade_folder("norm", tmp_path_factory.mktemp("source") / "legacy")
    folder = tmp_path_factory.mktemp("saved") / "lsg-bart-tiny"
    model = AutoModelForSeq2SeqLM.from_pretrained(source, trust_remote_code=True)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("case", LEGACY_CASES)
def test_legacy_checkpoint_matches_original(case, attn_implementation, tmp_path):
    folder = upgrade_folder(case, tmp_path / case)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True, attn_implementation=attn_implementation
    )
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert_runs_copied_code(model)
    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "expected.safetensors")
    with torch.no_grad():
        outputs = model.eval()(**inputs)
    assert outputs.encoder_last_hidden_state.shape == expected["encoder_last_hidden_state"].shape
    encoder_error = (outputs.encoder_last_hidden_state - expected["encoder_last_hidden_state"]).abs().max()
    logits_error = (outputs.logits - expected["logits"]).abs().max()
    assert encoder_error < TOLERANCE and logits_error < TOLERANCE, (encoder_error, logits_error)


@pytest.mark.parametrize("kind", ["legacy", "saved"])
@pytest.mark.parametrize("auto_class", list(AUTO_CLASSES), ids=lambda c: c.__name__)
def test_every_auto_class_loads(auto_class, kind, legacy_folder, saved_folder):
    folder = legacy_folder if kind == "legacy" else saved_folder
    assert type(AutoConfig.from_pretrained(folder, trust_remote_code=True)).__name__ == "LSGBartConfig"
    model, info = auto_class.from_pretrained(folder, trust_remote_code=True, output_loading_info=True)
    assert type(model).__name__ == AUTO_CLASSES[auto_class]
    assert_runs_copied_code(model)
    missing = [key for key in info["missing_keys"] if not key.startswith(NEW_HEAD_KEYS)]
    assert not missing and not info["mismatched_keys"], info
    if auto_class is AutoModelForCausalLM:  # the decoder's embeddings come from the shared ones
        shared = AutoModel.from_pretrained(folder, trust_remote_code=True).shared.weight
        torch.testing.assert_close(model.model.decoder.embed_tokens.weight, shared, rtol=0, atol=0)
        torch.testing.assert_close(model.lm_head.weight, shared, rtol=0, atol=0)
    inputs = parity_inputs()
    with torch.no_grad():
        if auto_class is AutoModelForCausalLM:
            outputs = model.eval()(input_ids=inputs["decoder_input_ids"])
        else:
            outputs = model.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert all(torch.isfinite(value).all() for value in outputs.values() if isinstance(value, torch.Tensor))


def test_hidden_states_and_tuple_outputs(saved_folder):
    model = AutoModelForSeq2SeqLM.from_pretrained(saved_folder, trust_remote_code=True).eval()
    inputs = parity_inputs()
    with torch.no_grad():
        outputs = model(**inputs, output_hidden_states=True, output_attentions=True)
        as_tuple = model(**inputs, return_dict=False)
    assert len(outputs.encoder_hidden_states) == model.config.encoder_layers + 1
    torch.testing.assert_close(outputs.encoder_hidden_states[-1], outputs.encoder_last_hidden_state)
    assert outputs.encoder_attentions is None
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], outputs.logits)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_with_cache_matches_generate_without(saved_folder, num_beams):
    model = AutoModelForSeq2SeqLM.from_pretrained(saved_folder, trust_remote_code=True).eval()
    inputs = parity_inputs()
    settings = dict(num_beams=num_beams, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    with torch.no_grad():
        cached = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **settings)
        uncached = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False, **settings
        )
    assert cached.shape[0] == 2 and cached.shape[1] >= 9
    assert torch.equal(cached, uncached)


def test_trainer_steps_start_from_the_models_loss_and_lower_it(saved_folder, tmp_path):
    """`Trainer` on one batch, four times: its first loss is the model's own loss on that batch, each step changes
    the weights, and the loss falls."""
    model = AutoModelForSeq2SeqLM.from_pretrained(
        saved_folder, trust_remote_code=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0
    )
    inputs = parity_inputs()
    rows = [
        {"input_ids": inputs["input_ids"][i], "attention_mask": inputs["attention_mask"][i],
         "labels": inputs["decoder_input_ids"][i]}
        for i in range(2)
    ]
    batch = transformers.default_data_collator(rows)
    with torch.no_grad():
        first_loss = model.train()(**batch).loss.item()
    before = model.model.encoder.layers[0].self_attn.q_proj.weight.detach().clone()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2,
        report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows)
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4
    assert losses[0] == pytest.approx(first_loss, abs=1e-4)  # older releases log 4 decimals
    assert losses[-1] < losses[0] - 0.1, losses
    assert result.training_loss == pytest.approx(sum(losses) / 4, abs=1e-4)
    assert not torch.equal(model.model.encoder.layers[0].self_attn.q_proj.weight.detach(), before)


def test_save_pretrained_output_loads_again(saved_folder, tmp_path):
    assert all((saved_folder / name).is_file() for name in REMOTE_CODE_FILES)
    assert json.loads((saved_folder / "config.json").read_text())["model_type"] == "lsg_bart"
    model = AutoModelForSeq2SeqLM.from_pretrained(saved_folder, trust_remote_code=True).eval()
    again = tmp_path / "again"
    model.save_pretrained(again)
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(again, trust_remote_code=True).eval()
    inputs = parity_inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_summarization_pipeline(saved_folder):
    summarizer = transformers.pipeline("summarization", model=str(saved_folder), trust_remote_code=True)
    assert type(summarizer).__name__ == "LSGBartSummarizationPipeline"
    text = " ".join(["the model reads long documents and writes short summaries"] * 60)
    results = summarizer([text, text[:200]], max_new_tokens=6, num_beams=2)
    assert len(results) == 2 and all(isinstance(r["summary_text"], str) for r in results)
    single = summarizer(text, max_new_tokens=6, num_beams=2)
    assert single[0]["summary_text"] == results[0]["summary_text"]


def exchange_entry(tmp_path, kind=""):
    """This environment's entry in the exchange folder (`LSG_VERSION_EXCHANGE`, set by the version matrix; else a
    folder of this test's own), or in its `kind` sub-folder."""
    exchange = os.path.join(os.environ.get("LSG_VERSION_EXCHANGE", str(tmp_path / "exchange")), kind)
    os.makedirs(exchange, exist_ok=True)
    # Folder names become module names of the copied code: no dots.
    environment = f"py{sys.version_info[0]}_{sys.version_info[1]}-torch{torch.__version__}-transformers{transformers.__version__}"
    return os.path.join(exchange, re.sub(r"[^A-Za-z0-9_-]", "_", environment))


def publish(own, write):
    """Make this environment's entry `own` with `write(staging)` unless an earlier run did, then return every
    finished entry beside it (the sub-folders of other kinds left out)."""
    if not os.path.isdir(own):
        staging = own + ".partial"
        shutil.rmtree(staging, ignore_errors=True)
        write(staging)
        os.replace(staging, own)
    folders = sorted(
        entry.path
        for entry in os.scandir(os.path.dirname(own))
        if entry.is_dir() and not entry.name.endswith(".partial") and entry.name != CONVERTED
    )
    assert own in folders
    return folders


def test_checkpoints_saved_under_other_versions_load(saved_folder, tmp_path):
    """Each run leaves its checkpoint and logits in the exchange folder and loads every checkpoint there, its own
    included, so that each environment (Python, torch, transformers) reads the others' output."""
    inputs = parity_inputs()

    def write(staging):
        model = AutoModelForSeq2SeqLM.from_pretrained(saved_folder, trust_remote_code=True).eval()
        shutil.copytree(saved_folder, staging)
        with torch.no_grad():
            save_file({"logits": model(**inputs).logits}, os.path.join(staging, "logits.safetensors"))

    for folder in publish(exchange_entry(tmp_path), write):
        model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(**inputs).logits
        expected = load_file(os.path.join(folder, "logits.safetensors"))["logits"]
        assert (logits - expected).abs().max() < TOLERANCE, folder


def token_ids(tokenizer):
    """`tokenizer`'s ids of TOKENIZER_TEXTS, one by one and the first two as a pair."""
    return [tokenizer(text)["input_ids"] for text in TOKENIZER_TEXTS] + [tokenizer(*TOKENIZER_TEXTS[:2])["input_ids"]]


def test_converted_checkpoints_saved_under_other_versions_load_their_tokenizers(tmp_path, monkeypatch):
    """Each run converts the parity source (a BART with its tokenizer) with `lsg-bart-convert`, from the source tree
    in a process of its own, into the exchange's `converted` folder; then it loads the tokenizer of every converted
    checkpoint there with `AutoTokenizer`, as users do, and gets transformers' own class, the writer's ids and no
    question about running the folder's code. transformers 4 takes the class from tokenizer_config.json and needs no
    `trust_remote_code`; transformers 5 reads config.json first, whose model is the folder's code."""

    def write(staging):
        command = [sys.executable, "-m", "lsg_bart.convert", "--initial_model", str(PARITY / "initial"),
                   "--model_name", staging, "--max_sequence_length", "2048"]
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300,
                                env=dict(os.environ, PYTHONPATH=path), stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr[-3000:]
        # The tokenizer files as this transformers reads them (a BART config stands in for the folder's).
        tokenizer = AutoTokenizer.from_pretrained(staging, config=transformers.BartConfig())
        Path(staging, "token_ids.json").write_text(json.dumps(token_ids(tokenizer)))

    questions = []
    monkeypatch.setattr("builtins.input", lambda *prompt: questions.append(prompt) or "n")
    options = {"trust_remote_code": True} if int(transformers.__version__.split(".")[0]) >= 5 else {}
    for folder in publish(exchange_entry(tmp_path, CONVERTED), write):
        tokenizer = AutoTokenizer.from_pretrained(folder, **options)
        assert not questions, f"{folder}: AutoTokenizer asked whether to run the folder's code"
        assert type(tokenizer).__module__.startswith("transformers."), type(tokenizer)
        assert token_ids(tokenizer) == json.loads(Path(folder, "token_ids.json").read_text()), folder


def test_activation_checkpointing_recomputes_layers_with_the_same_gradients(saved_folder):
    inputs = parity_inputs()
    grads, attention_calls = [], []
    for checkpointing in (False, True):
        model = AutoModelForSeq2SeqLM.from_pretrained(
            saved_folder, trust_remote_code=True, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0
        ).train()
        if checkpointing:  # `activation_checkpointing_enable` from 5.24 on; the old name still works
            getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        calls = {"encoder": [], "decoder": []}
        model.model.encoder.layers[0].self_attn.register_forward_hook(lambda *args: calls["encoder"].append(1))
        model.model.decoder.layers[0].self_attn.register_forward_hook(lambda *args: calls["decoder"].append(1))
        model(**inputs, labels=inputs["decoder_input_ids"]).loss.backward()
        grads.append([model.model.encoder.layers[0].self_attn.q_proj.weight.grad,
                      model.model.decoder.layers[0].fc1.weight.grad])  # fmt: skip
        attention_calls.append({side: len(side_calls) for side, side_calls in calls.items()})
    assert attention_calls == [{"encoder": 1, "decoder": 1}, {"encoder": 2, "decoder": 2}], (
        "checkpointing runs the layers again in the backward pass"
    )
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def with_bart_decoder_layers(model):
    """A copy of `model` that decodes as BART does: encoder outputs repeated per beam, BART's decoder layers."""
    import copy
    import functools
    import inspect

    from transformers import GenerationMixin
    from transformers.models.bart.modeling_bart import BartDecoderLayer

    reference = copy.deepcopy(model)
    accepted = inspect.signature(BartDecoderLayer.__init__).parameters
    layers = reference.model.decoder.layers
    for index, layer in enumerate(layers):
        plain = BartDecoderLayer(reference.config, **({"layer_idx": index} if "layer_idx" in accepted else {}))
        plain.load_state_dict(layer.state_dict())
        plain.train(layer.training)
        layers[index] = plain
    expand = inspect.getattr_static(GenerationMixin, "_expand_inputs_for_generation")
    if isinstance(expand, staticmethod):  # before transformers 5
        reference._expand_inputs_for_generation = expand.__func__
    else:
        reference._expand_inputs_for_generation = functools.partial(expand, reference)
    return reference


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_matches_bart_cross_attention_over_repeated_encoder_outputs(saved_folder, num_beams):
    model = AutoModelForSeq2SeqLM.from_pretrained(saved_folder, trust_remote_code=True).eval()
    inputs = parity_inputs()
    settings = dict(num_beams=num_beams, max_new_tokens=8, min_new_tokens=8, output_scores=True,
                    return_dict_in_generate=True)
    with torch.no_grad():
        ours, bart = (
            candidate.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **settings)
            for candidate in (model, with_bart_decoder_layers(model))
        )
    assert torch.equal(ours.sequences, bart.sequences)
    if num_beams > 1:
        torch.testing.assert_close(ours.sequences_scores, bart.sequences_scores, rtol=1e-5, atol=1e-5)


def test_generate_with_weights_wide_enough_to_stream_matches_bart_decoder_layers(saved_folder):
    """A decoding step's streamed products and its self-attention over this transformers' cache give BART's
    beam-search tokens and scores, on weights wide enough to be streamed (512 wide, biases drawn)."""
    config = AutoConfig.from_pretrained(saved_folder, trust_remote_code=True)
    config.update(dict(d_model=512, encoder_ffn_dim=1024, decoder_ffn_dim=1024, init_std=0.5, dropout=0.0,
                       attention_dropout=0.0))  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=True).eval()
    with torch.no_grad():  # BART starts its biases at zero: draw them, so that they count
        for linear in model.modules():
            if isinstance(linear, torch.nn.Linear) and linear.bias is not None:
                linear.bias.normal_(0.0, 0.5)
    inputs = parity_inputs()
    settings = dict(num_beams=3, max_new_tokens=6, min_new_tokens=6, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        ours, bart = (
            candidate.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **settings)
            for candidate in (model, with_bart_decoder_layers(model))
        )
    assert len(set(ours.sequences.flatten().tolist())) > 4, "the tokens should vary"
    assert torch.equal(ours.sequences, bart.sequences)
    # Logits this large (weights drawn at 0.5) carry float32's summation-order differences between the two
    # cross-attentions (BART's fused kernel, ours written out) into the scores at about 1e-4 of their size.
    torch.testing.assert_close(ours.sequences_scores, bart.sequences_scores, rtol=1e-3, atol=1e-4)
