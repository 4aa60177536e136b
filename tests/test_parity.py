"""The original implementation's golden outputs, reproduced by loading legacy checkpoints with this project's code."""

import json
import shutil

import pytest
import torch
from conftest import PARITY, REPO
from lsg_bart import REMOTE_CODE_FILES
from lsg_bart.lsg_kernels import KERNELS, kernel_problem
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

CASES = sorted(p.name for p in PARITY.iterdir() if (p / "expected.safetensors").exists())
TOLERANCE = 1e-4


def upgrade_folder(case, tmp_path):
    """What a user upgrading an old checkpoint does: drop the remote-code files into its folder."""
    folder = tmp_path / case
    shutil.copytree(PARITY / case, folder)
    for name in REMOTE_CODE_FILES:
        shutil.copy(REPO / name, folder / name)
    return folder


def test_every_shared_case_is_covered():
    assert set(CASES) >= {"norm", "none", "pooling", "stride", "short_full_attention", "no_pass_global"}
    for case in CASES:
        config = json.loads((PARITY / case / "config.json").read_text())
        assert config["model_type"] == "bart" and config["base_model_prefix"] == "lsg"


# "auto" with each attention implementation, then every kernel forced (those this machine cannot run are refused).
KERNEL_SETTINGS = [("auto", "sdpa"), ("auto", "eager")] + [(kernel, "sdpa") for kernel in KERNELS]


@pytest.mark.parametrize("kernel, attn_implementation", KERNEL_SETTINGS, ids=lambda value: value)
@pytest.mark.parametrize("case", CASES)
def test_legacy_checkpoint_matches_original(case, kernel, attn_implementation, tmp_path):
    folder = upgrade_folder(case, tmp_path)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True, attn_implementation=attn_implementation,
        lsg_kernel=kernel,
    )
    assert model.config.lsg_kernel == kernel
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(model).__name__ == "LSGBartForConditionalGeneration"
    assert not type(model).__module__.startswith("lsg_bart"), "must run the code copied into the folder"

    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "expected.safetensors")
    mask_before = inputs["attention_mask"].clone()
    with torch.no_grad():
        problem = kernel_problem(kernel, inputs["input_ids"].float(), 0.0) if kernel != "auto" else None
        if problem:
            with pytest.raises(ValueError, match=f"lsg_kernel='{kernel}' cannot run here"):
                model.eval()(**inputs)
            return
        outputs = model.eval()(**inputs)

    assert torch.equal(inputs["attention_mask"], mask_before), "the caller's attention_mask was modified"
    encoder_error = (outputs.encoder_last_hidden_state - expected["encoder_last_hidden_state"]).abs().max()
    logits_error = (outputs.logits - expected["logits"]).abs().max()
    assert outputs.encoder_last_hidden_state.shape == expected["encoder_last_hidden_state"].shape
    assert encoder_error < TOLERANCE and logits_error < TOLERANCE, (encoder_error, logits_error)


def test_legacy_classification_head_matches_original(tmp_path):
    folder = upgrade_folder("norm", tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
    head = load_file(folder / "classification_head.safetensors")
    result = model.load_state_dict(head, strict=False)
    assert not result.unexpected_keys and not any(k.startswith("classification_head") for k in result.missing_keys)

    inputs = load_file(folder / "inputs.safetensors")
    expected = load_file(folder / "expected.safetensors")
    with torch.no_grad():
        logits = model.eval()(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert (logits - expected["classification_logits"]).abs().max() < TOLERANCE
