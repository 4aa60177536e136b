"""lsg-bart-summarize (`lsg_bart/summarize.py`): a corpus summarised, killed and resumed, over two processes, in
batches, from each kind of input; its public function; its one-line refusals before any work.

The checkpoint is a tiny LSG-BART with large random weights (init_std 0.5): its summaries differ from document to
document (with the usual 0.02 every summary is the same string, which would hide a summary given to the wrong id),
and greedy or beam search on CPU gives the same tokens on every run, batched or not.
"""

import fcntl
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration
from lsg_bart.summarize import load_model, run, summarize_texts
from lsg_bart.tiny import build_tokenizer, sample_text

from conftest import REPO, write_jsonl

GENERATION = ["--num_beams", "2", "--max_new_tokens", "8", "--max_input_length", "256", "--no_progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("diverse-lsg-bart")
    tokenizer = build_tokenizer(model_max_length=4096)
    config = LSGBartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=4096,
        block_size=32, sparse_block_size=32, num_global_tokens=1, dropout=0.0, attention_dropout=0.0, init_std=0.5,
    )  # fmt: skip
    torch.manual_seed(0)
    LSGBartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def document(i):
    """Documents of 20 to 380 words (some past 256 tokens: truncated), in an order unrelated to their length."""
    return sample_text(20 + (53 * i) % 360, seed=i)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rows = [{"id": f"doc-{i:02d}", "text": document(i), "source": "test"} for i in range(16)]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", rows)


def read_output(path):
    """The records of an output file, after checking that every line is whole."""
    data = open(path, "rb").read()
    assert data == b"" or data.endswith(b"\n"), data[-100:]
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def by_id(records):
    """The records by id, after checking that each id is there once."""
    ids = [record["id"] for record in records]
    assert len(ids) == len(set(ids)), sorted(ids)
    return {record["id"]: record for record in records}


def summarize_cli(checkpoint, inputs, output, *argv):
    inputs = inputs if isinstance(inputs, list) else [inputs]
    return run(["--model", str(checkpoint), "--input", *map(str, inputs), "--output", str(output), *GENERATION, *argv])


@pytest.fixture(scope="module")
def reference(checkpoint, corpus, tmp_path_factory):
    """An uninterrupted run, one document at a time in input order: the records by id."""
    output = tmp_path_factory.mktemp("reference") / "out.jsonl"
    summarize_cli(checkpoint, corpus, output, "--batch_size", "1", "--sort_window", "1")
    records = read_output(output)
    assert [record["id"] for record in records] == [f"doc-{i:02d}" for i in range(16)]  # input order
    return by_id(records)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cli_summarises_a_jsonl_corpus_as_generate_does(checkpoint, corpus, reference, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    report = summarize_cli(checkpoint, corpus, output)  # batches of 4, sorted by length
    closing = capsys.readouterr().err.strip().splitlines()[-1]
    records = by_id(read_output(output))
    assert records == reference
    assert len({record["summary"] for record in records.values()}) == 16  # the checkpoint tells documents apart

    # Each record: generate() on the document cut to 256 tokens, its kept tokens, whether it was cut.
    model, tokenizer = load_model(str(checkpoint), "cpu")
    for i in range(16):
        record, text = records[f"doc-{i:02d}"], document(i)
        full = len(tokenizer(text, verbose=False)["input_ids"])
        inputs = tokenizer(text, truncation=True, max_length=256, return_tensors="pt")
        [expected_ids] = model.generate(**inputs, num_beams=2, max_new_tokens=8)
        expected = tokenizer.decode(expected_ids, skip_special_tokens=True)
        assert record == {"id": f"doc-{i:02d}", "summary": expected.strip(), "input_tokens": min(full, 256),
                          "truncated": full > 256}  # fmt: skip
    truncated = sum(record["truncated"] for record in records.values())
    assert 0 < truncated < 16
    assert (report["summaries"], report["truncated"], report["errors"], report["already_done"]) == (16, truncated, 0, 0)
    assert closing.startswith(f"lsg-bart-summarize: 16 summaries written to {output} ({truncated} truncated), 0 fail")

    # A rerun has nothing left to do, and leaves the output as it is.
    before = output.read_bytes()
    assert summarize_cli(checkpoint, corpus, output)["already_done"] == 16
    assert output.read_bytes() == before


@pytest.mark.parametrize("batch_size, sort_window", [(4, 1), (3, 5), (8, 256)])
def test_batched_and_sorted_runs_give_each_id_once_with_the_same_summaries(
    batch_size, sort_window, checkpoint, corpus, reference, tmp_path
):
    output = tmp_path / "out.jsonl"
    summarize_cli(checkpoint, corpus, output, "--batch_size", str(batch_size), "--sort_window", str(sort_window))
    records = read_output(output)
    assert by_id(records) == reference
    # The lines come as the batches were made: windows of max(sort_window, batch_size) documents in input order,
    # each sorted longest first unless sort_window is 1.
    window = max(sort_window, batch_size)
    for start in range(0, 16, window):
        lines = records[start : start + window]
        assert {line["id"] for line in lines} == {f"doc-{i:02d}" for i in range(start, min(start + window, 16))}
        lengths = [line["input_tokens"] for line in lines]
        expected = [reference[line["id"]]["input_tokens"] for line in lines]
        assert lengths == (sorted(expected, reverse=True) if sort_window > 1 else expected)


def test_killed_with_sigkill_and_run_again_gives_each_id_once_with_an_uninterrupted_runs_summaries(
    checkpoint, tmp_path
):
    rows = [{"id": i, "text": document(i)} for i in range(40)]  # integer ids: written back as integers
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    settings = ["--batch_size", "2", "--sort_window", "4", "--min_new_tokens", "16", "--max_new_tokens", "16"]
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    summarize_cli(checkpoint, corpus, uninterrupted, *settings)

    output = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "lsg_bart.summarize", "--model", str(checkpoint), "--input", corpus,
               "--output", str(output), *GENERATION, *settings]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    while process.poll() is None and (not output.exists() or output.read_bytes().count(b"\n") < 6):
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-3000:]
    written = read_output(output)
    assert 6 <= len(written) < 40

    report = summarize_cli(checkpoint, corpus, output, *settings)
    assert report["already_done"] == len(written) and report["summaries"] == 40 - len(written)
    records = read_output(output)
    assert records[: len(written)] == written  # appended after what the killed run wrote
    assert by_id(records) == by_id(read_output(uninterrupted))
    assert sorted(records, key=lambda record: record["id"])[0]["id"] == 0  # ids keep their JSON type


def test_a_cut_last_line_is_removed_and_a_line_missing_its_newline_is_kept(checkpoint, corpus, reference, tmp_path,
                                                                          caplog):  # fmt: skip
    output = tmp_path / "out.jsonl"
    lines = [json.dumps(reference[f"doc-{i:02d}"]) for i in range(3)]
    # What a kill in the middle of a write leaves: whole lines, then the start of one.
    output.write_text("\n".join(lines) + "\n" + json.dumps(reference["doc-03"])[:40], encoding="utf-8")
    report = summarize_cli(checkpoint, corpus, output)
    assert report["already_done"] == 3
    assert by_id(read_output(output)) == reference
    assert "removed a cut last line" in caplog.text

    # A last line that is whole but for its newline (killed between the two) is kept.
    output.write_text("\n".join(lines), encoding="utf-8")
    assert summarize_cli(checkpoint, corpus, output)["already_done"] == 3
    assert by_id(read_output(output)) == reference
    assert read_output(output)[:3] == [json.loads(line) for line in lines]


def test_shards_of_a_killed_multi_process_run_are_folded_once(checkpoint, corpus, reference, tmp_path):
    """A run of 3 processes was killed: its output has doc-00, a shard has doc-00 again (killed after a fold wrote
    it, before the shard went), doc-01 and a cut line. A run of 1 process folds the shard in and summarises the
    rest: each id once, the shard gone."""
    output = tmp_path / "out.jsonl"
    output.write_text(json.dumps(reference["doc-00"]) + "\n", encoding="utf-8")
    shard = tmp_path / "out.jsonl.rank-00002-of-00003"
    shard.write_text(json.dumps(reference["doc-00"]) + "\n" + json.dumps(reference["doc-01"]) + '\n{"id": "doc-0',
                     encoding="utf-8")  # fmt: skip
    unrelated = tmp_path / "out.jsonl.rank-2-of-3.backup"
    unrelated.write_text("not a shard\n")
    report = summarize_cli(checkpoint, corpus, output)
    assert report["already_done"] == 2 and report["summaries"] == 14  # doc-00, and doc-01 from the shard
    assert by_id(read_output(output)) == reference
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.rank-2-of-3.backup"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def readme_commands():
    """The two commands of the README's "Summarising a corpus" section, as a shell would split them."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("\n## Summarising a corpus\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def as_written(words, checkpoint, corpus, output):
    """A README command's words with its checkpoint, corpus and output replaced by the test's."""
    replacements = {"CKPT": str(checkpoint), "corpus.jsonl": str(corpus), "out.jsonl": str(output)}
    return [replacements.get(word, word) for word in words]


def test_the_readmes_one_process_command(checkpoint, corpus, reference, tmp_path):
    one_process, _ = readme_commands()
    assert one_process[0] == "lsg-bart-summarize"
    run(as_written(one_process[1:], checkpoint, corpus, tmp_path / "out.jsonl") + GENERATION)
    assert by_id(read_output(tmp_path / "out.jsonl")) == reference


def launch(launcher, port):
    """The words that start lsg_bart.summarize in two processes: the README's torchrun command (torchrun run as
    `python -m torch.distributed.run` on a free port), or accelerate's launcher."""
    if launcher == "torchrun":
        _, torchrun = readme_commands()
        start = torchrun.index("lsg_bart.summarize") + 1
        assert torchrun[:start] == ["torchrun", "--nproc_per_node", "2", "-m", "lsg_bart.summarize"], torchrun
        return [sys.executable, "-m", "torch.distributed.run", "--master_addr", "127.0.0.1", "--master_port",
                str(port), *torchrun[1:start]], torchrun[start:]  # fmt: skip
    # accelerate's own `--cpu` launches a single process; its multi-process launcher runs gloo on CPU too.
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu", "--num_processes",
            "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_ip",
            "127.0.0.1", "--main_process_port", str(port), "-m", "lsg_bart.summarize"], \
        ["--model", "CKPT", "--input", "corpus.jsonl", "--output", "out.jsonl"]  # fmt: skip


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_give_each_id_once_with_the_same_summaries(launcher, checkpoint, corpus, reference, tmp_path):
    """Two processes on CPU (gloo), on an output that a one-process run began (3 ids): the rest is split between
    them, process 0 folds process 1's shard in, and the output holds each id once."""
    output = tmp_path / "out.jsonl"
    output.write_text("".join(json.dumps(reference[f"doc-{i:02d}"]) + "\n" for i in (0, 5, 9)), encoding="utf-8")
    launcher_words, arguments = launch(launcher, free_port())
    command = launcher_words + as_written(arguments, checkpoint, corpus, output) + GENERATION + ["--batch_size", "2"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert by_id(read_output(output)) == reference
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl"]  # the shard is folded in and gone
    closing = [line for line in result.stderr.splitlines() if line.startswith("lsg-bart-summarize:")]
    assert len(closing) == 1 and "13 summaries written" in closing[0] and "3 already done" in closing[0], closing


RAY_RECIPE = r"""
import glob, json, sys

import ray

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
{recipe}
rows = [json.loads(line) for path in glob.glob(sys.argv[1] + "/*.json") for line in open(path, encoding="utf-8")]
print(json.dumps(rows))
ray.shutdown()
"""


def test_the_docs_ray_recipe_on_a_local_ray_cluster(checkpoint, corpus, reference, tmp_path):
    """docs/corpus.md's Ray Data recipe, as written but for the paths, the generation settings of `reference` and
    one actor of one CPU (the machine has 2): each id once, with the command's summaries. Optional: Ray is not a
    dependency (CI installs it for this test after the suite)."""
    pytest.importorskip("ray")
    docs = (REPO / "docs" / "corpus.md").read_text(encoding="utf-8")
    recipe = re.search(r"\*\*Ray Data\*\*.*?```python\n(.*?)```", docs, re.S).group(1)
    output = tmp_path / "summaries"
    for written, replacement in (
        ('"lsg-bart-base-4096-arxiv"', repr(str(checkpoint))),
        ("batch_size=4)", "batch_size=4, max_input_length=256, num_beams=2, max_new_tokens=8)"),
        ("concurrency=4, num_cpus=2", "concurrency=1, num_cpus=1"),
        ('"corpus.jsonl"', repr(corpus)),
        ('"summaries/"', repr(str(output))),
    ):
        assert recipe.count(written) == 1, written
        recipe = recipe.replace(written, replacement)
    # Nothing leaves the loopback interface: no usage statistics, and the local cluster's processes talk over
    # 127.0.0.1 (Ray's single-machine mode) rather than the machine's network address.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    result = subprocess.run([sys.executable, "-c", RAY_RECIPE.format(recipe=recipe), str(output)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    rows = by_id(json.loads(result.stdout.strip().splitlines()[-1]))
    assert rows == {key: {"id": key, "summary": record["summary"], "error": None} for key, record in reference.items()}


def test_bad_rows_are_error_lines_with_their_id_and_the_run_goes_on(checkpoint, reference, tmp_path, caplog):
    rows = [{"id": f"doc-{i:02d}", "text": document(i)} for i in range(4)]
    rows[1] = {"id": "doc-01", "body": document(1)}  # no text field
    rows[2]["text"] = "  \n"
    rows.append({"id": "doc-04", "text": ["not", "a", "string"]})
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    output = tmp_path / "out.jsonl"
    report = summarize_cli(checkpoint, corpus, output)
    assert (report["summaries"], report["errors"]) == (2, 3)
    records = by_id(read_output(output))
    assert records["doc-01"] == {"id": "doc-01", "error": "no 'text' field"}
    assert records["doc-02"] == {"id": "doc-02", "error": "empty text"}
    assert records["doc-04"] == {"id": "doc-04", "error": "'text' is a list, not a string"}
    assert records["doc-00"] == reference["doc-00"] and records["doc-03"] == reference["doc-03"]
    assert re.search(r"id 'doc-01' \('.*corpus.jsonl' line 2\): no 'text' field", caplog.text)

    # A rerun skips the error lines as done; with --retry_errors, once the input is fixed, they are summarised.
    assert summarize_cli(checkpoint, corpus, output)["already_done"] == 5
    rows[1], rows[2]["text"], rows[4]["text"] = {"id": "doc-01", "text": document(1)}, document(2), document(4)
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    report = summarize_cli(checkpoint, corpus, output, "--retry_errors")
    assert (report["already_done"], report["summaries"], report["errors"]) == (2, 3, 0)
    assert by_id(read_output(output)) == {f"doc-{i:02d}": reference[f"doc-{i:02d}"] for i in range(5)}


def test_text_files_csv_and_parquet_inputs(checkpoint, reference, tmp_path):
    texts = {f"doc-{i:02d}": document(i) for i in range(4)}
    folder = tmp_path / "texts"
    folder.mkdir()
    for name, text in texts.items():
        (folder / f"{name}.txt").write_text(text, encoding="utf-8")
    (folder / "notes.md").write_text("not a .txt file")
    summarize_cli(checkpoint, folder, tmp_path / "folder.jsonl")
    expected = {f"{name}.txt": {**reference[name], "id": f"{name}.txt"} for name in texts}
    assert by_id(read_output(tmp_path / "folder.jsonl")) == expected
    summarize_cli(checkpoint, str(folder / "doc-0[12].txt"), tmp_path / "glob.jsonl")
    assert set(by_id(read_output(tmp_path / "glob.jsonl"))) == {"doc-01.txt", "doc-02.txt"}

    import pandas

    frame = pandas.DataFrame({"key": list(texts), "body": list(texts.values())})
    frame.to_csv(tmp_path / "corpus.csv", index=False)
    frame.to_parquet(tmp_path / "corpus.parquet")
    for name in ("corpus.csv", "corpus.parquet"):
        output = tmp_path / f"{name}.jsonl"
        summarize_cli(checkpoint, tmp_path / name, output, "--id_column", "key", "--text_column", "body")
        assert by_id(read_output(output)) == {name: reference[name] for name in texts}


def test_summarize_texts_keeps_the_order_and_reports_bad_texts(checkpoint, reference):
    model, tokenizer = load_model(str(checkpoint), "cpu")
    texts = [document(i) for i in range(6)] + ["", None]
    results = summarize_texts(model, tokenizer, texts, batch_size=4, max_input_length=256, num_beams=2,
                              max_new_tokens=8)  # fmt: skip
    assert results[:6] == [{k: v for k, v in reference[f"doc-{i:02d}"].items() if k != "id"} for i in range(6)]
    assert results[6:] == [{"error": "empty text"}, {"error": "'text' is null"}]


def test_int8_quantises_every_linear_layer_quietly_and_summarises_each_id_once(checkpoint, corpus, tmp_path):
    import warnings

    linear_layers = sum(type(module) is torch.nn.Linear for module in load_model(str(checkpoint), "cpu")[0].modules())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load_model(str(checkpoint), "cpu", int8=True)
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]
    assert not any(type(module) is torch.nn.Linear for module in model.modules())
    quantised = sum(isinstance(module, torch.ao.nn.quantized.dynamic.Linear) for module in model.modules())
    assert quantised == linear_layers == 2 * 6 + 2 * 10 + 1  # encoder and decoder layers' projections, the LM head
    output = tmp_path / "out.jsonl"
    report = summarize_cli(checkpoint, corpus, output, "--int8")
    records = by_id(read_output(output))
    assert len(records) == 16 == report["summaries"] and all(isinstance(r["summary"], str) for r in records.values())


def test_each_process_of_a_machine_gets_its_share_of_the_cores_or_its_own_gpu():
    from lsg_bart.summarize import Processes, choose_device, split_threads

    # What torchrun sets for the second process of the second machine, 2 machines of 2 processes.
    environment = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    processes = Processes.from_environment(environment)
    assert processes == Processes(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert Processes.from_environment({}) == Processes()  # launched alone
    assert choose_device("cuda", processes) == "cuda:1" and choose_device("cuda:0", processes) == "cuda:0"
    split_threads("cpu", None, processes)
    assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)) // 2)
    split_threads("cpu", 3, processes)  # --threads wins
    assert torch.get_num_threads() == 3
    split_threads("cuda:1", 1, processes)  # threads are left alone on a GPU
    assert torch.get_num_threads() == 3


def test_a_second_run_on_an_output_in_use_is_refused(checkpoint, corpus, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_bytes(b"")
    with open(output, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running lsg-bart-summarize holds it
        with pytest.raises(SystemExit) as exit_info:
            summarize_cli(checkpoint, corpus, output)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{str(output)!r} is in use by another running lsg-bart-summarize" in error
    assert output.read_bytes() == b""


BEFORE_HEAVY_IMPORTS = r"""
import contextlib, importlib.abc, io, json, os, sys


class Unimportable(importlib.abc.MetaPathFinder):  # as if torch and transformers were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "safetensors", "tqdm", "datasets"):
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, Unimportable())
from lsg_bart import summarize

rows = {
    "corpus.jsonl": ['{"id": "a", "text": "x"}', '{"id": "b", "text": "y"}'],
    "duplicates.jsonl": ['{"id": "a", "text": "x"}', '{"id": "b", "text": "y"}', '{"id": "a", "text": "z"}'],
    "no-id.jsonl": ['{"id": "a", "text": "x"}', '{"text": "y"}'],
    "float-id.jsonl": ['{"id": 1.5, "text": "x"}'],
    "no-text.jsonl": ['{"id": "a", "body": "x"}', '{"id": "b", "body": "y"}'],
    "broken.jsonl": ['{"id": "a", "text": "x"}', '{oops'],
    "foreign.jsonl": ['{"name": "mine"}'],
    "foreign-tail.jsonl": ['{"id": "a", "summary": "s", "input_tokens": 1, "truncated": false}', 'notes'],
    "notes.txt": ["A text file."],
}
for name, lines in rows.items():
    with open(name, "w") as f:
        f.write("\n".join(lines) + ("" if name == "foreign-tail.jsonl" else "\n"))
os.makedirs("folder")
os.makedirs("empty")
before = {name: open(name, "rb").read() for name in rows}


def answer(argv, environment):  # the exit status (None if main returned), stdout and stderr
    os.environ.update(environment)
    out, err, code = io.StringIO(), io.StringIO(), None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            summarize.main(argv)
    except SystemExit as exit:
        code = exit.code
    finally:
        for name in environment:
            del os.environ[name]
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


print(json.dumps([answer(argv, environment) for argv, environment in json.loads(sys.argv[1])]))
print(sorted(name for name in ("torch", "transformers", "safetensors", "datasets") if name in sys.modules))
print(sorted(os.listdir(".")) == sorted([*rows, "folder", "empty"]))  # nothing written
print(all(open(name, "rb").read() == data for name, data in before.items()))  # nothing changed
"""


def reading(*inputs, output="out.jsonl"):
    """A command line reading `inputs` into `output`."""
    return ["--model", "ckpt", "--input", *inputs, "--output", output]


RUN = reading("corpus.jsonl")
# Each refusal, and its one-line message (after "lsg-bart-summarize: error: ").
ARGUMENT_ERRORS = [
    (["--input", "corpus.jsonl", "--output", "out.jsonl"], "the following arguments are required: --model"),
    (RUN + ["--batch_size", "0"], "--batch_size must be a positive integer, got 0"),
    (RUN + ["--sort_window", "-2"], "--sort_window must be a positive integer, got -2"),
    (RUN + ["--max_input_length", "0"], "--max_input_length must be a positive integer, got 0"),
    (RUN + ["--max_new_tokens", "4", "--min_new_tokens", "9"], "--min_new_tokens must be from 0 to --max_new_tokens=4"),
    (RUN + ["--device", "gpu0"], "--device 'gpu0' is not a device"),
    (RUN + ["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
    (RUN + ["--int8", "--dtype", "bfloat16"], "--int8 quantises float32 weights; drop --dtype bfloat16 or --int8"),
    (RUN + ["--int8", "--device", "cuda"], "--int8 runs on CPU only"),
    (RUN + ["--num_beams", "two"], "argument --num_beams: invalid int value: 'two'"),
    (reading("corpus.jsonl", output="folder"), "--output 'folder' is a folder"),
    (reading("corpus.jsonl", output="nowhere/out.jsonl"),
     "--output 'nowhere/out.jsonl': the folder 'nowhere' does not exist"),
    (reading("corpus.jsonl", output="corpus.jsonl"),
     "--input 'corpus.jsonl' is the --output file; give another --output"),
    (reading("*.jsonl", output="broken.jsonl"),
     "--input 'broken.jsonl' is the --output file"),  # a glob's matches are read by their suffixes: JSON lines here
    (reading("corpus.jsonl", "notes.txt"), "--input mixes jsonl and text files; give inputs of one kind"),
    (reading("corpus.jsonl", "folder"), "--input 'folder' is a folder with no .txt file"),
    (reading("missing.jsonl"), "--input 'missing.jsonl' does not exist"),
    (reading("empty"), "--input 'empty' is a folder with no .txt file and no saved dataset in it"),
    (reading("*.md"), "--input '*.md' matches no file"),
    (reading("corpus.jsonl", "missing.txt"), "--input 'missing.txt' does not exist"),
    (reading("duplicates.jsonl"),
     "duplicate id 'a' in --input ('duplicates.jsonl' line 1 and 'duplicates.jsonl' line 3); ids must be unique"),
    (reading("no-id.jsonl"), "'no-id.jsonl' line 2 has no 'id' field (--id_column); every row needs an id"),
    (reading("float-id.jsonl"),
     "'float-id.jsonl' line 1 has the id 1.5 (float) in 'id'; ids must be strings or integers"),
    (reading("no-text.jsonl"), "--text_column 'text' is in no row of --input; the first row's fields are id, body"),
    (reading("broken.jsonl"), "'broken.jsonl' line 2 is not JSON"),
    (reading("corpus.csv"), "--input 'corpus.csv' does not exist"),
    (reading("corpus.jsonl", output="foreign.jsonl"),
     "'foreign.jsonl' line 1 is not a line that lsg-bart-summarize writes"),
    (reading("corpus.jsonl", output="foreign-tail.jsonl"),
     "'foreign-tail.jsonl' ends with a line that lsg-bart-summarize did not write"),
]
ENVIRONMENT_ERRORS = [
    ({"WORLD_SIZE": "two"}, "the environment variable WORLD_SIZE='two' is not a non-negative integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 and WORLD_SIZE=2: RANK must be from 0 to WORLD_SIZE - 1"),
]


def test_help_and_refusals_answer_in_one_line_before_heavy_imports_and_write_nothing(tmp_path):
    """`--help`, every bad argument, input (duplicate ids included) and output answers with torch, transformers and
    datasets unimportable, and leaves the folder as it was."""
    cases = [(["--help"], {})] + [(argv, {}) for argv, _ in ARGUMENT_ERRORS]
    cases += [(RUN, environment) for environment, _ in ENVIRONMENT_ERRORS]
    result = subprocess.run([sys.executable, "-c", BEFORE_HEAVY_IMPORTS, json.dumps(cases)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    results, imported, nothing_written, nothing_changed = result.stdout.strip().splitlines()
    assert (imported, nothing_written, nothing_changed) == ("[]", "True", "True")
    help_run, *errors = json.loads(results)
    help_text = " ".join(help_run["out"].split())
    assert help_run["code"] == 0 and "torchrun --nproc_per_node 2 -m lsg_bart.summarize" in help_text
    for flag, default in (("--num_beams", 4), ("--max_new_tokens", 256), ("--batch_size", 4), ("--sort_window", 256),
                          ("--dtype", "float32"), ("--id_column", "id"), ("--text_column", "text")):  # fmt: skip
        assert re.search(rf"{flag} [^-]*\bdefault: {default}\)", help_text), (flag, help_text)
    expected = [message for _, message in ARGUMENT_ERRORS + ENVIRONMENT_ERRORS]
    for message, got in zip(expected, errors):
        assert got["code"] == 2, (message, got)
        prog, said = got["err"].split(": error: ", 1)
        assert prog == "lsg-bart-summarize" and said.startswith(message) and said.count("\n") == 1, (message, got)


def test_console_script_runs():
    """`lsg-bart-summarize`, as pip installs it from pyproject.toml's [project.scripts]."""
    script = os.path.join(os.path.dirname(sys.executable), "lsg-bart-summarize")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: lsg-bart-summarize"), result.stderr
