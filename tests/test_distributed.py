"""Distributed fine-tuning: the summarisation example under `torchrun` and `accelerate launch` (DDP, gloo, 2 CPUs).

Each launcher starts a small driver written by the test. The driver runs the example's own `main()` with the command
line it was given (exactly what `python examples/run_summarization.py ...` runs), then reports what each process
ends with: a digest of its weights, a digest of the first batch its data loader gives it, its loss on that batch,
and whether the folder written by process 0 holds its weights. Identical weights after steps on different batches
show that the gradients were averaged across the processes.
"""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from lsg_bart import REMOTE_CODE_FILES
from lsg_bart.tiny import sample_text

from conftest import REPO, write_jsonl

EXAMPLE = REPO / "examples" / "run_summarization.py"

DRIVER = """
import hashlib, importlib.util, json, math, os, sys

import torch
import torch.distributed as dist
from safetensors.torch import load_file

spec = importlib.util.spec_from_file_location("run_summarization", {example!r})
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)

trainer = example.main(sys.argv[1:])
trainer.accelerator.wait_for_everyone()  # process 0 has written the output folder

model = trainer.accelerator.unwrap_model(trainer.model)
state = {{name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}}
digest = hashlib.sha256()
for name in sorted(state):
    digest.update(name.encode())
    digest.update(state[name].float().numpy().tobytes())

batch = next(iter(trainer.get_train_dataloader()))
model.eval()
with torch.no_grad():
    local_loss = model(**{{key: value.to(model.device) for key, value in batch.items()}}).loss.item()

# The untrained model's loss on the first batch of each process: what the first logged loss averages.
from transformers import AutoModelForSeq2SeqLM

model_path = sys.argv[sys.argv.index("--model_name_or_path") + 1]
initial_model = AutoModelForSeq2SeqLM.from_pretrained(model_path, trust_remote_code=True).eval()
with torch.no_grad():
    initial_loss = initial_model(**batch).loss.item()
initial_losses = [None] * dist.get_world_size()
dist.all_gather_object(initial_losses, initial_loss)

args = trainer.args
saved = load_file(os.path.join(args.output_dir, "model.safetensors"))
initial = load_file(os.path.join(model_path, "model.safetensors"))
report = {{
    "rank": args.process_index,
    "world_size": dist.get_world_size(),
    "backend": dist.get_backend(),
    "weights": digest.hexdigest(),
    "batch": hashlib.sha256(batch["input_ids"].numpy().tobytes()).hexdigest(),
    "local_loss": local_loss,
    "initial_losses": initial_losses,
    "logged_losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    "steps": trainer.state.global_step,
    "matches_saved_folder": all(torch.equal(state[name], saved[name]) for name in saved),
    "changed_by_training": any(not torch.equal(state[name], initial[name]) for name in initial if name in state),
}}
with open(os.path.join(os.environ["LSG_TEST_REPORT_DIR"], f"rank{{args.process_index}}.json"), "w") as f:
    json.dump(report, f)
# gloo's worker threads sometimes abort the process at interpreter shutdown (SIGABRT, "terminate called without an
# active exception", pytorch/pytorch#190489): wait for both reports, close the group, and leave without running
# the C++ static destructors.
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    rows = [
        {"article": sample_text(150 + 10 * seed, seed), "abstract": sample_text(10, 500 + seed)} for seed in range(16)
    ]
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", rows)


LAUNCHERS = {
    "torchrun": lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_addr", "127.0.0.1", "--master_port", str(port)],
    # accelerate's own `--cpu` launches a single process (or needs MPI); its multi-process launcher with the
    # example's --use_cpu runs DDP over gloo on CPU.
    "accelerate": lambda port: [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
                                "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                "--mixed_precision", "no", "--dynamo_backend", "no",
                                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)],
}  # fmt: skip


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_end_with_identical_weights(launcher, tiny_checkpoint, train_file, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(example=str(EXAMPLE)), encoding="utf-8")
    reports = tmp_path / "reports"
    reports.mkdir()
    output_dir = tmp_path / "out"
    example_args = [
        "--model_name_or_path", str(tiny_checkpoint),
        "--train_file", str(train_file),
        "--max_source_length", "256",
        "--max_target_length", "16",
        "--do_train",
        "--max_steps", "3",
        "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-3",
        "--logging_steps", "1",
        "--use_cpu",
        "--ddp_backend", "gloo",
        "--ddp_find_unused_parameters", "false",
        "--save_strategy", "no",
        "--report_to", "none",
        "--output_dir", str(output_dir),
    ]  # fmt: skip
    env = dict(os.environ, LSG_TEST_REPORT_DIR=str(reports), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["HF_HOME"] = str(tmp_path / "hf")  # no accelerate config file from the user's home; own modules cache
    command = LAUNCHERS[launcher](free_port()) + [str(driver)] + example_args
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]

    ranks = [json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for rank, report in enumerate(ranks):
        assert report["rank"] == rank and report["world_size"] == 2 and report["backend"] == "gloo"
        assert report["steps"] == 3
        assert len(report["logged_losses"]) == 3 and all(math.isfinite(loss) for loss in report["logged_losses"])
        assert math.isfinite(report["local_loss"])
        assert report["changed_by_training"]
        assert report["matches_saved_folder"]
    # Different data on each process, yet the same weights at the end: the gradients were synchronised.
    assert ranks[0]["batch"] != ranks[1]["batch"]
    assert ranks[0]["local_loss"] != ranks[1]["local_loss"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    # The first logged loss is the mean of the processes' losses (not their sum, see mean_loss_per_batch).
    for report in ranks:
        expected = sum(report["initial_losses"]) / 2
        assert report["logged_losses"][0] == pytest.approx(expected, rel=0.05)

    # Process 0 wrote a self-contained remote-code folder.
    for name in (*REMOTE_CODE_FILES, "tokenizer.json", "model.safetensors"):
        assert (output_dir / name).is_file(), name
    assert "AutoModelForSeq2SeqLM" in json.loads((output_dir / "config.json").read_text())["auto_map"]
    assert all(torch.isfinite(tensor).all() for tensor in load_file(output_dir / "model.safetensors").values())


FSDP2_DRIVER = """
import json, os, sys

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from lsg_bart import LSGBartForConditionalGeneration

checkpoint, output_dir, report_dir = sys.argv[1:]
dist.init_process_group("gloo")
rank = dist.get_rank()
model = LSGBartForConditionalGeneration.from_pretrained(checkpoint, dropout=0.0, activation_dropout=0.0)
for layer in (*model.model.encoder.layers, *model.model.decoder.layers):
    fully_shard(layer)
fully_shard(model)
sharded = next(model.model.encoder.layers[0].parameters())

# Each process learns its own batch of 300-token inputs (LSG attention: blocks of 32), one row padded.
generator = torch.Generator().manual_seed(rank)
input_ids = torch.randint(4, model.config.vocab_size, (2, 300), generator=generator)
attention_mask = torch.ones_like(input_ids)
attention_mask[1, 250:] = 0
labels = torch.randint(4, model.config.vocab_size, (2, 12), generator=generator)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
losses = []
model.train()
for step in range(10):
    loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
model.eval()
with torch.no_grad():
    final_loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()

# The full weights, gathered on every process, saved by process 0 with save_pretrained and reloaded.
state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
reloaded_loss = None
if rank == 0:
    plain = LSGBartForConditionalGeneration(model.config)
    plain.load_state_dict(state)
    plain.save_pretrained(output_dir)
    reloaded = LSGBartForConditionalGeneration.from_pretrained(output_dir).eval()
    with torch.no_grad():
        reloaded_loss = reloaded(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.item()
report = {
    "world_size": dist.get_world_size(),
    "sharded_type": type(sharded).__name__,
    "losses": losses,
    "final_loss": final_loss,
    "reloaded_loss": reloaded_loss,
}
with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)  # as in DRIVER: gloo's threads may abort at interpreter shutdown
"""


def test_fsdp2_fully_shard_trains_on_two_processes_and_the_saved_model_reloads(tiny_checkpoint, tmp_path):
    """FSDP2 (`fully_shard` on each layer and the model) over gloo on 2 CPU processes: the parameters are sharded,
    each process's loss falls, and the gathered weights saved with `save_pretrained` reload with the same loss."""
    driver = tmp_path / "fsdp2_driver.py"
    driver.write_text(FSDP2_DRIVER, encoding="utf-8")
    reports = tmp_path / "reports"
    reports.mkdir()
    output_dir = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    command = LAUNCHERS["torchrun"](free_port()) + [str(driver), str(tiny_checkpoint), str(output_dir), str(reports)]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    ranks = [json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in ranks:
        assert report["world_size"] == 2 and report["sharded_type"] == "DTensor"
        assert all(math.isfinite(loss) for loss in report["losses"])
        assert report["final_loss"] < 0.8 * report["losses"][0]
    assert ranks[0]["reloaded_loss"] == pytest.approx(ranks[0]["final_loss"], rel=1e-4)
    assert (output_dir / "model.safetensors").is_file()


def test_the_fsdp_layer_classes_in_the_docs_are_the_models_layers(tiny_checkpoint):
    """docs/fine-tuning.md's `transformer_layer_cls_to_wrap` names the model's own layer classes (FSDP looks them up
    by name in the model, and stops where one is missing)."""
    import re

    from lsg_bart import LSGBartForConditionalGeneration

    documented = re.search(r'"transformer_layer_cls_to_wrap": (\[[^\]]*\])', (REPO / "docs" / "fine-tuning.md").read_text())
    model = LSGBartForConditionalGeneration.from_pretrained(tiny_checkpoint)
    layers = (*model.model.encoder.layers, *model.model.decoder.layers)
    layer_classes = {type(layer).__name__ for layer in layers}
    assert set(json.loads(documented.group(1))) == layer_classes
    assert layer_classes <= set(model._no_split_modules)  # also what `device_map="auto"` keeps on one device
