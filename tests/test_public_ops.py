"""The optional kernels' fallbacks: with `LSG_BART_PUBLIC_OPS=1` every probe fails, as on a CPU or a PyTorch
build without them, and the model must give the fast path's results with public ops alone."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, padded_batch, tiny_config
from safetensors.torch import load_file

from lsg_bart import SPARSITY_TYPES, LSGBartModel
from lsg_bart import lsg_attention

PROBES = ("ONEDNN_LINEAR", "CPU_FLASH_ATTENTION", "CPU_BF16", "UNFOLD_BACKWARD")
LENGTHS = [150, 119]  # 10 blocks of 16 with padding, and a padded row


def encoder_results(sparsity_type):
    """Encoder output (inference), then a training step's output and gradients, of a seeded tiny encoder."""
    config = tiny_config(sparsity_type=sparsity_type, dropout=0.0, attention_dropout=0.0, lsh_seed=3)
    torch.manual_seed(0)
    encoder = LSGBartModel(config).encoder
    input_ids, attention_mask = padded_batch(LENGTHS)
    with torch.no_grad():
        inference = encoder.eval()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    training = encoder.train()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    training.pow(2).mean().backward()
    results = {"inference": inference, "training": training.detach()}
    for name, parameter in encoder.named_parameters():
        if parameter.grad is not None:
            results[f"grad.{name}"] = parameter.grad
    return results


def windows_gradient(size, step):
    """The gradient that `OverlappingWindows` passes back for windows that overlap unevenly."""
    x = torch.randn(2, 3, 17, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    windows = lsg_attention.OverlappingWindows.apply(x, size, step)
    windows.backward(torch.arange(windows.numel(), dtype=torch.float32).view_as(windows))
    return x.grad


SCRIPT = f"""
import json, sys
sys.path.insert(0, {str(REPO / "tests")!r})
from safetensors.torch import save_file
import test_public_ops as t
from lsg_bart import cpu_linear, lsg_attention, lsg_kernels
out = sys.argv[1]
results = {{}}
for sparsity_type in t.SPARSITY_TYPES:
    results.update({{f"{{sparsity_type}}.{{k}}": v for k, v in t.encoder_results(sparsity_type).items()}})
results["windows"] = t.windows_gradient(5, 2)
save_file({{k: v.contiguous() for k, v in results.items()}}, out + "/results.safetensors")
modules = (cpu_linear, lsg_attention, lsg_kernels)
probes = {{name: [getattr(m, name) for m in modules if hasattr(m, name)] for name in t.PROBES}}
probes = {{name: found[0] not in (None, False) for name, found in probes.items()}}
open(out + "/probes.json", "w").write(json.dumps(probes))
"""


@pytest.fixture(scope="module")
def public_ops_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("public-ops")
    env = {**os.environ, "LSG_BART_PUBLIC_OPS": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(out / "results.safetensors"), json.loads((out / "probes.json").read_text())


def test_every_probe_fails_with_public_ops_only(public_ops_results):
    _, probes = public_ops_results
    assert probes == {name: False for name in PROBES}


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_public_ops_match_the_fast_path(public_ops_results, sparsity_type):
    fallback, _ = public_ops_results
    fast = encoder_results(sparsity_type)
    assert fast.keys() == {key.split(".", 1)[1] for key in fallback if key.startswith(f"{sparsity_type}.")}
    for key, value in fast.items():
        torch.testing.assert_close(fallback[f"{sparsity_type}.{key}"], value, rtol=1e-4, atol=1e-5, msg=key)


def test_uneven_windows_gradient_matches_unfold(public_ops_results):
    fallback, _ = public_ops_results
    x = torch.randn(2, 3, 17, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    windows = x.unfold(2, 5, 2).transpose(-1, -2)
    windows.backward(torch.arange(windows.numel(), dtype=torch.float32).view_as(windows))
    torch.testing.assert_close(fallback["windows"], x.grad)
    torch.testing.assert_close(windows_gradient(5, 2), x.grad)
