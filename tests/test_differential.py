"""Seeded differential test: random valid LSG settings, every kernel that runs on this CPU against `reference`.

Each case draws, from its own seed, a sparsity type, block, sparse block and factor sizes, global tokens, the
flags that shape the output (mask_first_token, pass_global_tokens_to_decoder, pool_with_global), head count, a
length around `2 * block_size` or well beyond it (multiples of the block and not), and a batch whose second row
is padded, and most cases a token chunk of a few blocks (the multi-group path of long inputs). A one-layer
encoder runs it with each kernel: outputs and the gradients of the input embeddings and of
every weight must match the `reference` kernel (the dense mask written out). A failure names its seed.
"""

import random

import pytest
import torch

from lsg_bart import SPARSITY_TYPES, LSGBartConfig, LSGBartModel
from lsg_bart import lsg_kernels
from lsg_bart.lsg_kernels import KERNELS, kernel_problem

CASES = 240
# bfloat16 kernels have their own, looser tests; flex has no backward pass on CPU (forward only here).
KERNELS_TO_CHECK = [name for name in KERNELS if name not in ("reference", "cpu_bf16_scores")]


def draw_settings(seed):
    """Valid LSG settings and a batch shape for case `seed` (settings the config refuses are drawn again)."""
    rng = random.Random(seed)
    while True:
        block_size = rng.choice([2, 4, 8, 16])
        factors = [f for f in (1, 2, 4) if block_size % f == 0]
        settings = dict(
            sparsity_type=rng.choice(SPARSITY_TYPES),
            block_size=block_size,
            sparsity_factor=rng.choice(factors),
            sparse_block_size=rng.choice([0, block_size // 2 or 1, block_size, 2 * block_size]),
            num_global_tokens=rng.choice([1, 2, 3]),
            mask_first_token=rng.random() < 0.3,
            pass_global_tokens_to_decoder=rng.random() < 0.7,
            pool_with_global=rng.random() < 0.7,
            encoder_attention_heads=rng.choice([2, 4]),
        )
        around = 2 * block_size + rng.choice([-1, 0, 1])
        beyond = block_size * rng.randint(3, 9) + rng.choice([0, 0, rng.randint(1, block_size)])
        length = max(2, rng.choice([around, beyond, beyond]))
        try:
            config = LSGBartConfig(
                vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32,
                decoder_ffn_dim=32, decoder_attention_heads=2, max_position_embeddings=block_size * 12,
                dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, lsh_seed=seed, **settings,
            )
        except ValueError:
            continue
        padded_length = max(1, length - rng.randint(1, max(1, length // 2)))
        return config, length, padded_length


def run(encoder, inputs_embeds, attention_mask, probe, grad):
    """The encoder output, and with `grad` the gradients of the input embeddings and of every weight."""
    embeds = inputs_embeds.clone().requires_grad_(grad)
    encoder.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad):
        out = encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        if not grad:
            return out, {}
        (out * probe[:, : out.shape[1]]).sum().backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    grads["inputs_embeds"] = embeds.grad.clone()
    return out.detach(), grads


@pytest.mark.parametrize("seed", range(CASES))
def test_random_settings_every_kernel_matches_the_reference(seed, monkeypatch):
    config, length, padded_length = draw_settings(seed)
    # Three cases in four take the CPU kernels' multi-group path: TOKEN_CHUNK (2,048 tokens) is far above these
    # lengths, so a chunk of 1 to 3 blocks stands in for it (the projections, groups of blocks, the per-token work).
    blocks_per_chunk = seed % 4
    if blocks_per_chunk:
        monkeypatch.setattr(lsg_kernels, "TOKEN_CHUNK", blocks_per_chunk * config.block_size)
    torch.manual_seed(seed)
    encoder = LSGBartModel(config).encoder.eval()
    inputs_embeds = torch.randn(2, length, config.d_model)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[1, padded_length:] = 0
    probe = torch.randn(2, length + config.num_global_tokens, config.d_model)
    where = f"seed {seed}: {config.sparsity_type}, length {length} (row 2: {padded_length}), chunk of " + (
        f"{blocks_per_chunk} block(s), " if blocks_per_chunk else "2,048 tokens, "
    ) + ", ".join(
        f"{name}={getattr(config, name)}" for name in ("block_size", "sparse_block_size", "sparsity_factor",
                                                       "num_global_tokens", "mask_first_token",
                                                       "pass_global_tokens_to_decoder", "pool_with_global"))
    expected = {}
    for grad in (False, True):
        encoder.config.lsg_kernel = "reference"
        expected[grad] = run(encoder, inputs_embeds, attention_mask, probe, grad)
    checked = 0
    for kernel in KERNELS_TO_CHECK:
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                if kernel_problem(kernel, inputs_embeds, 0.0):  # cannot run here (this CPU, this mode)
                    continue
            encoder.config.lsg_kernel = kernel
            out, grads = run(encoder, inputs_embeds, attention_mask, probe, grad)
            expected_out, expected_grads = expected[grad]
            torch.testing.assert_close(out, expected_out, atol=2e-5, rtol=1e-4, msg=lambda m: f"{kernel}, {where}: {m}")
            assert grads.keys() == expected_grads.keys(), (kernel, where)
            for name in grads:
                torch.testing.assert_close(grads[name], expected_grads[name], atol=5e-5, rtol=1e-3,
                                           msg=lambda m, name=name: f"{kernel}, grad of {name}, {where}: {m}")
            checked += 1
    assert checked >= 4, f"only {checked} kernel settings could run ({where})"  # eager and sdpa run everywhere
