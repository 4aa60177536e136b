"""The examples: summarisation and classification fine-tuning, batch summarisation, pipelines.

Everything runs in this process on a tiny LSG checkpoint and data written by the tests (no network). Remote code
loaded from folders goes to the temporary HF_HOME set in conftest.py.
"""

import json
import math
import re
import shlex
import subprocess
import sys
import warnings

import datasets
import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from transformers import pipeline as hf_pipeline

from lsg_bart import REMOTE_CODE_FILES, LSGBartConfig
from lsg_bart.cli import input_length
from lsg_bart.tiny import sample_text

from conftest import EXAMPLES, REPO, load_example, write_jsonl

CODE_FILES = REMOTE_CODE_FILES


run_summarization = load_example("run_summarization")
run_classification = load_example("run_classification")
summarize = load_example("summarize")


@pytest.fixture(autouse=True)
def one_thread_and_logging_restored():
    """Tiny models run fastest on one thread (and the CPU cores are shared); the examples set up logging as
    command-line programs do, which is put back afterwards for the other tests."""
    threads = torch.get_num_threads()
    verbosities = (transformers.logging.get_verbosity(), datasets.logging.get_verbosity())
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity(verbosities[0])
    transformers.logging.reset_format()
    datasets.logging.set_verbosity(verbosities[1])


@pytest.fixture(scope="module")
def summarization_data(tmp_path_factory):
    """Documents of 150-250 words (more than two blocks of tokens: LSG attention runs) with short summaries."""
    folder = tmp_path_factory.mktemp("summarization-data")

    def rows(seeds):
        return [{"article": sample_text(150 + 25 * (s % 5), s), "abstract": sample_text(12, 1000 + s)} for s in seeds]

    return {
        "train": write_jsonl(folder / "train.jsonl", rows(range(8))),
        "validation": write_jsonl(folder / "validation.jsonl", rows(range(100, 104))),
        "test": write_jsonl(folder / "test.jsonl", rows(range(200, 203))),
    }


class Probe(TrainerCallback):
    """Watches what the training steps run: calls of the first encoder and decoder feed-forward layers per step
    (2 when the layers are recomputed by gradient checkpointing, 1 otherwise) and the dtype of their outputs."""

    def __init__(self):
        self.calls, self.dtypes, self._count = [], set(), 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        base = model.model
        for layer in (base.encoder.layers[0], base.decoder.layers[0]):
            layer.fc1.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if module.training:
            self._count += 1
            self.dtypes.add(output.dtype)

    def on_step_begin(self, args, state, control, **kwargs):
        self._count = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.calls.append(self._count)


def checkpoint_and_files(checkpoint, data, *splits):
    """The arguments naming the checkpoint and the data file of each of `splits`."""
    argv = ["--model_name_or_path", str(checkpoint)]
    for split in splits:
        argv += [f"--{split}_file", str(data[split])]
    return argv


def common_args(output_dir, max_steps=3):
    return [
        "--output_dir", str(output_dir),
        "--max_steps", str(max_steps),
        "--per_device_train_batch_size", "2",
        "--per_device_eval_batch_size", "2",
        "--learning_rate", "1e-3",
        "--use_cpu",
        "--report_to", "none",
        "--save_strategy", "no",
        "--disable_tqdm", "true",
        "--seed", "0",
    ]  # fmt: skip


def assert_self_contained(folder, auto_class):
    """Weights, config with auto_map, the two LSG code files and the tokenizer, all in `folder`."""
    for name in CODE_FILES + ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"][auto_class].startswith("modeling_lsg_bart.")
    assert config["auto_map"]["AutoConfig"] == "configuration_lsg_bart.LSGBartConfig"


def loads_as_remote_code(folder, auto_class):
    """Whether `folder` loads with its own copy of the code, in a process where the package is not imported (there,
    the package's registration with the Auto classes would take precedence)."""
    code = (
        f"import transformers; model = transformers.{auto_class}.from_pretrained({str(folder)!r}, "
        "trust_remote_code=True); print(type(model).__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()[-1].startswith("transformers_modules.")


def state_digest(state_dict):
    return {name: tensor.float().sum().item() for name, tensor in state_dict.items()}


# ---------------------------------------------------------------------------------------------------------------
# run_summarization.py
# ---------------------------------------------------------------------------------------------------------------


def test_rouge_scores_from_rouge_score_package():
    scores = run_summarization.rouge_scores(["the cat sat on the mat."], ["the cat sat on the mat."])
    assert scores == {"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0, "rougeLsum": 100.0}
    assert run_summarization.rouge_scores(["dogs bark"], ["cats purr"])["rouge1"] == 0.0
    # 2 of 4 unigrams shared both ways: precision = recall = F1 = 0.5.
    assert run_summarization.rouge_scores(["a b c d"], ["a b e f"])["rouge1"] == pytest.approx(50.0)
    # Lsum works on sentences: one sentence per line whatever the input's line breaks.
    assert run_summarization.sentences("One. Two!  Three?") == "One.\nTwo!\nThree?"


def test_summarization_compute_metrics_ignores_label_padding(tiny_checkpoint):
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    compute_metrics = run_summarization.build_compute_metrics(tokenizer)
    ids = tokenizer(["long documents and short summaries"])["input_ids"][0]
    predictions = torch.tensor([ids + [tokenizer.pad_token_id] * 3]).numpy()
    labels = torch.tensor([ids + [-100] * 3]).numpy()
    metrics = compute_metrics((predictions, labels))
    assert metrics["rouge1"] == metrics["rougeLsum"] == 100.0
    assert metrics["gen_len"] == len(ids)


def test_summarization_trains_evaluates_predicts_and_saves_remote_code_folder(
    tiny_checkpoint, summarization_data, tmp_path
):
    output_dir = tmp_path / "out"
    probe = Probe()
    argv = checkpoint_and_files(tiny_checkpoint, summarization_data, "train", "validation", "test") + [
        "--text_column", "article",
        "--summary_column", "abstract",
        "--max_source_length", "256",
        "--max_target_length", "24",
        "--do_train", "--do_eval", "--do_predict",
        "--predict_with_generate",
        "--generation_max_length", "8",
        "--num_beams", "2",
        "--logging_steps", "1",
    ] + common_args(output_dir, max_steps=4)  # fmt: skip
    trainer = run_summarization.main(argv, callbacks=[probe])

    # Training ran: finite losses, changed weights, plain fp32 steps without recomputation.
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses)
    assert probe.calls == [2, 2, 2, 2]  # encoder + decoder fc1, once each per step
    assert probe.dtypes == {torch.float32}

    # Evaluation and prediction report ROUGE from generated summaries.
    results = json.loads((output_dir / "all_results.json").read_text())
    for key in ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_rougeLsum", "eval_gen_len", "predict_rouge1"):
        assert 0.0 <= results[key] <= 100.0, key
    assert math.isfinite(results["eval_loss"])
    assert len((output_dir / "generated_predictions.txt").read_text().splitlines()) == 3

    # The folder is self-contained remote code and reloads with the trained weights.
    assert_self_contained(output_dir, "AutoModelForSeq2SeqLM")
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(output_dir, trust_remote_code=True)
    assert type(reloaded).__name__ == "LSGBartForConditionalGeneration"
    assert loads_as_remote_code(output_dir, "AutoModelForSeq2SeqLM")
    trained = state_digest(trainer.model.state_dict())
    assert state_digest(reloaded.state_dict()) == pytest.approx(trained)
    initial = state_digest(load_file(tiny_checkpoint / "model.safetensors"))
    assert any(initial[name] != pytest.approx(value) for name, value in trained.items() if name in initial)
    assert (
        AutoTokenizer.from_pretrained(output_dir, trust_remote_code=True).get_vocab()
        == AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True).get_vocab()
    )


def test_summarization_reads_csv_and_evaluates_without_training(tiny_checkpoint, tmp_path):
    path = tmp_path / "validation.csv"
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["document", "summary"])
        for seed in range(3):
            writer.writerow([sample_text(120, seed), sample_text(10, 50 + seed)])
    output_dir = tmp_path / "out"
    argv = checkpoint_and_files(tiny_checkpoint, {"validation": path}, "validation") + [
        "--do_eval", "--predict_with_generate",
        "--generation_max_length", "6",
    ] + common_args(output_dir)  # fmt: skip
    run_summarization.main(argv)
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    assert metrics["eval_samples"] == 3
    assert {"eval_rouge1", "eval_rougeLsum", "eval_loss"} <= metrics.keys()


def test_summarization_reads_a_dataset_by_name(tiny_checkpoint, summarization_data, tmp_path):
    """--dataset_name goes through datasets.load_dataset: here a local folder of JSON lines files (no network)."""
    import shutil

    folder = tmp_path / "my-dataset"
    folder.mkdir()
    shutil.copy(summarization_data["validation"], folder / "validation.jsonl")
    shutil.copy(summarization_data["test"], folder / "test.jsonl")
    output_dir = tmp_path / "out"
    argv = [
        "--model_name_or_path", str(tiny_checkpoint),
        "--dataset_name", str(folder),
        "--do_eval", "--do_predict", "--predict_with_generate",
        "--generation_max_length", "6",
    ] + common_args(output_dir)  # fmt: skip
    run_summarization.main(argv)  # columns default to the first two: article, abstract
    results = json.loads((output_dir / "all_results.json").read_text())
    assert results["eval_samples"] == 4 and results["predict_samples"] == 3
    assert "eval_rouge1" in results and "predict_rougeLsum" in results


def test_summarization_rejects_unknown_columns_and_clamps_source_length(tiny_checkpoint, summarization_data, tmp_path):
    argv = [
        "--model_name_or_path", str(tiny_checkpoint),
        "--train_file", summarization_data["train"],
        "--text_column", "body",
        "--do_train",
    ] + common_args(tmp_path / "out")  # fmt: skip
    with pytest.raises(ValueError, match="--text_column='body' is not a column"):
        run_summarization.main(argv)
    with pytest.raises(ValueError, match="must be a .json, .jsonl or .csv file"):
        run_summarization.parse_args(["--model_name_or_path", "x", "--train_file", "a.txt", "--output_dir", "o"])
    _, data_args, _ = run_summarization.parse_args(
        ["--model_name_or_path", "x", "--train_file", summarization_data["train"], "--output_dir", "o",
         "--max_source_length", "9999"]
    )
    config = LSGBartConfig(max_position_embeddings=4096)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    logger = run_summarization.logger
    assert input_length(data_args.max_source_length, "--max_source_length", tokenizer, config, logger) == 4096


def test_gradient_accumulation_logs_the_mean_loss(tiny_checkpoint, summarization_data, tmp_path):
    """With 2 accumulated micro-batches the logged loss is their mean, not their sum (see mean_loss_per_batch)."""
    argv = [
        "--model_name_or_path", str(tiny_checkpoint),
        "--train_file", summarization_data["train"],
        "--max_source_length", "256", "--max_target_length", "16",
        "--do_train", "--gradient_accumulation_steps", "2", "--logging_steps", "1",
    ] + common_args(tmp_path, max_steps=1)  # fmt: skip
    trainer = run_summarization.main(argv)
    assert trainer.model.accepts_loss_kwargs is False
    [logged] = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    # The untrained model's mean loss over the training documents: a random model's loss barely varies between them.
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    rows = [json.loads(line) for line in open(summarization_data["train"], encoding="utf-8")]
    with torch.no_grad():
        losses = [
            model(
                **tokenizer(row["article"], truncation=True, max_length=256, return_tensors="pt"),
                labels=tokenizer(text_target=row["abstract"], max_length=16, truncation=True, return_tensors="pt")[
                    "input_ids"
                ],
            ).loss.item()
            for row in rows
        ]
    assert logged == pytest.approx(sum(losses) / len(losses), rel=0.05)


@pytest.mark.parametrize("example", ["summarization", "classification"])
def test_gradient_checkpointing_and_bf16(example, tiny_checkpoint, summarization_data, classification_data, tmp_path):
    """--gradient_checkpointing recomputes the layers in the backward pass; --bf16 runs the steps in bfloat16."""
    probe = Probe()
    flags = ["--gradient_checkpointing", "--bf16", "--logging_steps", "1"] + common_args(tmp_path, max_steps=2)
    if example == "summarization":
        argv = [
            "--model_name_or_path", str(tiny_checkpoint),
            "--train_file", summarization_data["train"],
            "--max_source_length", "256", "--max_target_length", "16",
            "--do_train",
        ]  # fmt: skip
        trainer = run_summarization.main(argv + flags, callbacks=[probe])
    else:
        argv = [
            "--model_name_or_path", str(tiny_checkpoint),
            "--train_file", classification_data["train"],
            "--max_seq_length", "256",
            "--do_train",
        ]  # fmt: skip
        trainer = run_classification.main(argv + flags, callbacks=[probe])
    assert trainer.model.is_activation_checkpointing
    assert probe.calls == [4, 4]  # encoder + decoder fc1, each run again in the backward pass
    assert probe.dtypes == {torch.bfloat16}
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    # Mixed precision keeps float32 master weights: the saved model is float32.
    assert all(t.dtype == torch.float32 for t in load_file(tmp_path / "model.safetensors").values())


def readme_fine_tuning_command():
    """The arguments of the README's fine-tuning command (the `run_summarization.py` line of its "Fine-tuning"
    section), as a shell would pass them."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Fine-tuning\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    [command] = [line for line in block.splitlines() if "examples/run_summarization.py" in line]
    words = shlex.split(command)
    assert words[:2] == ["python", "examples/run_summarization.py"], command
    return words[2:]


def with_values(argv, **values):
    """`argv` with the values of the flags named in `values` replaced (each flag must be there)."""
    argv = list(argv)
    for name, value in values.items():
        assert f"--{name}" in argv, f"--{name} is no longer in the command"
        argv[argv.index(f"--{name}") + 1] = str(value)
    return argv


def test_the_readmes_fine_tuning_command_trains_on_this_machine(
    tiny_checkpoint, summarization_data, tmp_path, caplog
):
    """The README's command as written (--bf16 --gradient_checkpointing, no --use_cpu), with the tiny checkpoint and
    data and 2 short steps: it trains, in the precision that the example chooses for this machine, with no
    deprecation warning."""
    argv = with_values(
        readme_fine_tuning_command(),
        model_name_or_path=tiny_checkpoint,
        train_file=summarization_data["train"],
        validation_file=summarization_data["validation"],
        output_dir=tmp_path / "out",
    ) + [
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1",
        "--max_eval_samples", "2", "--generation_max_length", "8", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert "--bf16" in argv and "--gradient_checkpointing" in argv and "--use_cpu" not in argv
    probe = Probe()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = run_summarization.main(argv, callbacks=[probe])
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not deprecations, deprecations

    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    initial = state_digest(load_file(tiny_checkpoint / "model.safetensors"))
    trained = state_digest(trainer.model.state_dict())
    assert any(initial[name] != pytest.approx(value) for name, value in trained.items() if name in initial)
    assert math.isfinite(json.loads((tmp_path / "out" / "eval_results.json").read_text())["eval_loss"])
    assert probe.calls == [4, 4]  # --gradient_checkpointing: the layers run again in the backward pass

    common = run_summarization.common
    if not common.accelerator_available():
        from lsg_bart.lsg_kernels import CPU_BF16

        assert trainer.args.use_cpu and trainer.args.bf16 == CPU_BF16
        assert probe.dtypes == {torch.bfloat16 if CPU_BF16 else torch.float32}
        [note] = [record.getMessage() for record in caplog.records if record.getMessage().startswith("--bf16: ")]
        assert f"training on the CPU (use_cpu) in {'bfloat16' if CPU_BF16 else 'float32'}" in note


@pytest.mark.parametrize(
    "gpu, bf16_gpu, cpu_bf16, expected",
    [
        (False, False, True, dict(use_cpu=True, bf16=True, note="on the CPU (use_cpu) in bfloat16")),
        (False, False, False, dict(use_cpu=True, bf16=False, note="on the CPU (use_cpu) in float32")),
        (True, False, True, dict(use_cpu=False, bf16=False, note="does not support bfloat16; training in float32")),
        (True, True, False, dict(use_cpu=False, bf16=True, note=None)),
    ],
)
def test_bf16_becomes_a_precision_this_machine_runs(gpu, bf16_gpu, cpu_bf16, expected, monkeypatch, tmp_path):
    """--bf16 without --use_cpu on each kind of machine, from the command line and from a .json file: the precision
    and device chosen, and the one line saying so."""
    import transformers.utils

    import lsg_bart.lsg_kernels

    common = run_summarization.common
    monkeypatch.setattr(common, "accelerator_available", lambda: gpu)
    monkeypatch.setattr(transformers.utils, "is_torch_bf16_gpu_available", lambda: bf16_gpu)
    monkeypatch.setattr(lsg_bart.lsg_kernels, "CPU_BF16", cpu_bf16)
    monkeypatch.setattr(transformers.training_args, "is_torch_bf16_gpu_available", lambda: bf16_gpu)
    flags = ["--model_name_or_path", "x", "--validation_file", str(tmp_path / "v.jsonl"), "--output_dir", "o"]
    (tmp_path / "v.jsonl").write_text("{}\n")
    json_file = tmp_path / "arguments.json"
    json_file.write_text(json.dumps({"model_name_or_path": "x", "validation_file": str(tmp_path / "v.jsonl"),
                                     "output_dir": "o", "bf16": True}))
    for argv in (flags + ["--bf16"], [str(json_file)]):
        *_, training_args = run_summarization.parse_args(argv)
        assert (training_args.use_cpu, training_args.bf16) == (expected["use_cpu"], expected["bf16"])
        if expected["note"] is None:
            assert training_args.example_notes == ()
        else:
            [note] = training_args.example_notes
            assert note.startswith("--bf16: ") and expected["note"] in note
    # An explicit --use_cpu keeps --bf16 as given, as transformers does.
    *_, training_args = run_summarization.parse_args(flags + ["--bf16", "--use_cpu"])
    assert training_args.bf16 and training_args.use_cpu and training_args.example_notes == ()


def test_gradient_checkpointing_is_passed_on_without_a_deprecation_warning(tmp_path):
    """The documented --gradient_checkpointing (and its kwargs) reach transformers 5 under their new names."""
    (tmp_path / "v.jsonl").write_text("{}\n")
    argv = ["--model_name_or_path", "x", "--validation_file", str(tmp_path / "v.jsonl"), "--output_dir", "o",
            "--gradient_checkpointing", "--gradient_checkpointing_kwargs", '{"use_reentrant": false}']
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        *_, training_args = run_classification.parse_args(argv)
    assert training_args.gradient_checkpointing is True
    assert training_args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    if hasattr(training_args, "activation_checkpointing"):  # transformers 5
        assert training_args.activation_checkpointing is True


# ---------------------------------------------------------------------------------------------------------------
# run_classification.py
# ---------------------------------------------------------------------------------------------------------------

LABELS = ("legal", "medical", "science")


@pytest.fixture(scope="module")
def classification_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classification-data")

    def rows(seeds):
        return [{"text": sample_text(150 + 20 * (s % 4), s), "label": LABELS[s % 3]} for s in seeds]

    return {
        "train": write_jsonl(folder / "train.jsonl", rows(range(9))),
        "validation": write_jsonl(folder / "validation.jsonl", rows(range(100, 104))),
        "test": write_jsonl(folder / "test.jsonl", [{"text": sample_text(100, s)} for s in range(200, 202)]),
    }


def test_classification_trains_evaluates_predicts_and_serves_a_pipeline(tiny_checkpoint, classification_data, tmp_path):
    output_dir = tmp_path / "out"
    probe = Probe()
    argv = checkpoint_and_files(tiny_checkpoint, classification_data, "train", "validation", "test") + [
        "--max_seq_length", "256",
        "--do_train", "--do_eval", "--do_predict",
        "--logging_steps", "1",
    ] + common_args(output_dir)  # fmt: skip
    trainer = run_classification.main(argv, callbacks=[probe])
    assert type(trainer.model).__name__ == "LSGBartForSequenceClassification"
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    assert probe.calls == [2, 2, 2] and probe.dtypes == {torch.float32}

    results = json.loads((output_dir / "all_results.json").read_text())
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and 0.0 <= results["eval_f1_macro"] <= 1.0
    predictions = (output_dir / "predict_results.txt").read_text().splitlines()
    assert predictions[0] == "index\tprediction" and len(predictions) == 3
    assert {line.split("\t")[1] for line in predictions[1:]} <= set(LABELS)

    assert_self_contained(output_dir, "AutoModelForSequenceClassification")
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "legal", "1": "medical", "2": "science"}
    reloaded = AutoModelForSequenceClassification.from_pretrained(output_dir, trust_remote_code=True)
    assert loads_as_remote_code(output_dir, "AutoModelForSequenceClassification")
    assert state_digest(reloaded.state_dict()) == pytest.approx(state_digest(trainer.model.state_dict()))

    # The saved folder serves the text-classification pipeline, on a document longer than the model (truncated).
    classifier = hf_pipeline("text-classification", model=str(output_dir), trust_remote_code=True)
    long_document = sample_text(5000, 7)
    assert len(classifier.tokenizer(long_document)["input_ids"]) > 4096
    [prediction] = classifier(long_document, truncation=True)
    assert prediction["label"] in LABELS and 0.0 < prediction["score"] <= 1.0
    all_scores = classifier([sample_text(200, 8)], truncation=True, top_k=None)[0]
    assert sorted(score["label"] for score in all_scores) == list(LABELS)
    assert sum(score["score"] for score in all_scores) == pytest.approx(1.0, abs=1e-5)


def test_classification_metrics():
    metrics = run_classification.classification_metrics([0, 1, 1, 2], [0, 1, 2, 2], num_labels=3)
    assert metrics["accuracy"] == 0.75
    # F1 per class: 1, 2/3, 2/3.
    assert metrics["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


# ---------------------------------------------------------------------------------------------------------------
# summarize.py and the summarization pipeline
# ---------------------------------------------------------------------------------------------------------------


def test_summarize_files_truncates_uses_beam_settings_and_shows_progress(tiny_checkpoint, tmp_path, capsys):
    documents = {"short": sample_text(60, 1), "medium": sample_text(300, 2), "long": sample_text(900, 3)}
    paths = []
    for name, text in documents.items():
        (tmp_path / f"{name}.txt").write_text(text, encoding="utf-8")
        paths.append(str(tmp_path / f"{name}.txt"))
    output_dir = tmp_path / "summaries"
    argv = paths + [
        "--model", str(tiny_checkpoint),
        "--max_source_length", "256",
        "--num_beams", "3",
        "--max_new_tokens", "6",
        "--no_repeat_ngram_size", "2",
        "--batch_size", "2",
        "--output_dir", str(output_dir),
        "--jsonl",
    ]  # fmt: skip
    results = summarize.main(argv)
    captured = capsys.readouterr()
    assert "3/3" in captured.err  # the progress bar went over the three documents

    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["file"] for line in lines] == paths
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    for line, text in zip(lines, documents.values()):
        full = len(tokenizer(text, verbose=False)["input_ids"])
        assert line["truncated"] == (full > 256)
        assert line["input_tokens"] == min(full, 256)
    assert [line["truncated"] for line in lines] == [False, True, True]

    # The same summaries as generate() with those settings on the truncated inputs, one document at a time.
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    for name, text, result in zip(documents, documents.values(), results):
        inputs = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
        expected_ids = model.generate(**inputs, num_beams=3, max_new_tokens=6, no_repeat_ngram_size=2)
        expected = tokenizer.decode(expected_ids[0], skip_special_tokens=True).strip()
        assert result["summary"] == expected
        assert (output_dir / f"{name}.summary.txt").read_text(encoding="utf-8") == expected + "\n"


SUMMARIZE_BEFORE_HEAVY_IMPORTS = r"""
import contextlib, importlib.abc, importlib.util, io, json, os, sys


class Unimportable(importlib.abc.MetaPathFinder):  # as if torch and transformers were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "safetensors", "tqdm"):
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, Unimportable())
spec = importlib.util.spec_from_file_location("summarize", sys.argv[1])
summarize = importlib.util.module_from_spec(spec)
spec.loader.exec_module(summarize)
os.makedirs("folder")
with open("doc.txt", "w") as f:
    f.write("A document.")
with open("binary.txt", "wb") as f:
    f.write(b"\xff\xfe\x00binary")
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            summarize.main(argv)
        except SystemExit as exit:
            results.append({"code": exit.code, "out": out.getvalue(), "err": err.getvalue()})
print(json.dumps(results))
print(sorted(name for name in ("torch", "transformers", "safetensors") if name in sys.modules))
"""
# Each argument error of summarize.py, and its one-line message (after "PROG: error: ").
SUMMARIZE_ERRORS = [
    (["doc.txt"], "the following arguments are required: --model"),
    (["--model", "ckpt", "missing.txt"], "'missing.txt' is not a file (it does not exist or is a folder)"),
    (["--model", "ckpt", "folder"], "'folder' is not a file"),
    (["--model", "ckpt", "binary.txt"], "'binary.txt' is not UTF-8 text"),
    (["--model", "ckpt", "doc.txt", "--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
    (["--model", "ckpt", "doc.txt", "--num_beams", "0"], "--num_beams must be a positive integer, got 0"),
    (["--model", "ckpt", "doc.txt", "--max_source_length", "-1"], "--max_source_length must be a positive integer"),
    (["--model", "ckpt", "doc.txt", "--max_new_tokens", "4", "--min_new_tokens", "9"],
     "--min_new_tokens must be from 0 to --max_new_tokens=4, got 9"),
    (["--model", "ckpt", "doc.txt", "--output_dir", "doc.txt"], "--output_dir 'doc.txt' exists and is not a folder"),
    (["--model", "ckpt", "doc.txt", "--device", "gpu0"], "--device 'gpu0' is not a device"),
    (["--model", "ckpt", "doc.txt", "--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (["--model", "ckpt", "doc.txt", "--num_beams", "two"], "argument --num_beams: invalid int value: 'two'"),
]


def test_summarize_help_and_argument_errors_answer_before_heavy_imports(tmp_path):
    """summarize.py's `--help` and argument errors answer with torch and transformers unimportable."""
    cases = [["--help"]] + [argv for argv, _ in SUMMARIZE_ERRORS]
    script = str(EXAMPLES / "summarize.py")
    result = subprocess.run([sys.executable, "-c", SUMMARIZE_BEFORE_HEAVY_IMPORTS, script, json.dumps(cases)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    results, imported = result.stdout.strip().splitlines()
    assert imported == "[]"
    help_run, *errors = json.loads(results)
    assert help_run["code"] == 0 and "summarize_texts" in help_run["out"] and "lsg-bart-summarize" in help_run["out"]
    help_text = " ".join(help_run["out"].split())
    for flag, default in (("--num_beams", 4), ("--max_new_tokens", 256), ("--batch_size", 1), ("--dtype", "float32")):
        assert re.search(rf"{flag} [^-]*\bdefault: {default}\)", help_text), (flag, help_text)
    for (argv, expected), got in zip(SUMMARIZE_ERRORS, errors):
        assert got["code"] == 2, (argv, got)
        prog, message = got["err"].split(": error: ", 1)
        assert message.startswith(expected) and message.count("\n") == 1, (argv, got)


def test_summarize_reads_stdin_and_caps_length_at_the_model(tiny_checkpoint, monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(sample_text(5000, 4)))
    results = summarize.main(["--model", str(tiny_checkpoint), "--max_new_tokens", "4", "--num_beams", "2"])
    captured = capsys.readouterr()
    assert results[0]["truncated"] and results[0]["input_tokens"] == 4096  # the model's max_position_embeddings
    assert captured.out == results[0]["summary"] + "\n"
    assert "truncated to 4096 tokens: <stdin>" in captured.err


def test_summarize_says_which_file_is_empty_and_summarises_the_others(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "doc.txt").write_text(sample_text(80, 1), encoding="utf-8")
    files = [str(tmp_path / "empty.txt"), str(tmp_path / "doc.txt")]
    results = summarize.main(files + ["--model", str(tiny_checkpoint), "--max_new_tokens", "4", "--no_progress"])
    captured = capsys.readouterr()
    assert results[0] == {"error": "empty text"} and set(results[1]) == {"summary", "input_tokens", "truncated"}
    assert f"{files[0]}: empty text, not summarised" in captured.err
    assert captured.out == f"==> {files[1]} <==\n{results[1]['summary']}\n\n"


def test_summarization_pipeline_with_a_saved_checkpoint(tiny_checkpoint):
    summarizer = hf_pipeline("summarization", model=str(tiny_checkpoint), trust_remote_code=True)
    long_document = sample_text(5000, 5)  # longer than the model: truncated
    [result] = summarizer(long_document, num_beams=2, max_new_tokens=6)
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint, trust_remote_code=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_checkpoint, trust_remote_code=True).eval()
    inputs = tokenizer(long_document, truncation=True, max_length=4096, return_tensors="pt")
    expected = model.generate(**inputs, num_beams=2, max_new_tokens=6)
    assert result["summary_text"] == tokenizer.decode(expected[0], skip_special_tokens=True)
    batch = summarizer([sample_text(100, 1), sample_text(200, 2)], max_new_tokens=4)
    assert len(batch) == 2 and all(set(item) == {"summary_text"} for item in batch)
