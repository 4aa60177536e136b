"""LSG attention against literal, loop-by-loop readings of LSG-SPEC sections 4 and 5."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import padded_batch, tiny_config

from lsg_bart import SPARSITY_TYPES, LSGBartModel
from lsg_bart.lsg_settings import LSG_KERNELS, named_table
from lsg_bart import lsg_attention as attention
from lsg_bart import lsg_kernels as kernels
from lsg_bart.lsg_attention import (
    AttentionInputs,
    AttentionSettings,
    OverlappingWindows,
    key_sets,
    lsg_attention,
    select_by_block_stride,
    select_by_norm,
    select_by_pooling,
    select_by_stride,
    select_sparse_tokens,
)
from lsg_bart.lsg_kernels import (
    KERNELS,
    attend,
    attend_bf16_written_out,
    attend_in_two_parts,
    choose_kernel,
    kernel_problem,
)

# Kernels with autograd; `cpu_bf16_scores` is for bfloat16 inference and tested on its own.
TRAINING_KERNELS = ["eager", "sdpa", "cpu_two_part", "flex"]


def random_tokens(n=2, h=4, t=32, d=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, h, t, d, generator=generator)
    values = torch.randn(n, h, t, d, generator=generator)
    visible = torch.ones(n, 1, t, 1, dtype=torch.bool)
    visible[1, :, t - 7 :] = False  # row 1 is padded
    return keys, values, visible


@pytest.mark.parametrize(
    "length, size, step",
    [(24, 12, 4), (26, 8, 4), (22, 6, 4), (21, 3, 4)],  # step divides size (with a spare tail), or it does not
)
def test_overlapping_windows_are_unfold_forward_and_backward(length, size, step):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, length, 5, generator=generator)
    expected_windows = x.unfold(2, size, step).transpose(-1, -2)  # (2, 3, w, size, 5)
    grad_windows = torch.randn(expected_windows.shape, generator=generator)
    x_ours, x_unfold = x.clone().requires_grad_(), x.clone().requires_grad_()
    windows = OverlappingWindows.apply(x_ours, size, step)
    windows.backward(grad_windows)
    x_unfold.unfold(2, size, step).transpose(-1, -2).backward(grad_windows)
    assert torch.equal(windows.detach(), expected_windows)
    torch.testing.assert_close(x_ours.grad, x_unfold.grad, atol=1e-6, rtol=1e-6)


def test_norm_keeps_largest_norms_per_chunk_in_ascending_order():
    keys, values, visible = random_tokens()
    chunk, factor = 8, 2
    k, v, m = select_by_norm(keys, values, visible, chunk, factor)
    n, h, t, _ = keys.shape
    for b in range(n):
        for head in range(h):
            for c in range(t // chunk):
                span = slice(c * chunk, (c + 1) * chunk)
                norms = keys[b, head, span].norm(dim=-1) * visible[b, 0, span, 0]
                chosen = norms.argsort()[-(chunk // factor) :] + c * chunk
                out = slice(c * chunk // factor, (c + 1) * chunk // factor)
                picked_visible = visible[b, 0, chosen, 0]
                assert torch.equal(m[b, head, out, 0], picked_visible)
                # Masked tokens all count as norm 0: which of them fill a chunk does not matter.
                assert torch.equal(k[b, head, out][picked_visible], keys[b, head, chosen][picked_visible])
                assert torch.equal(v[b, head, out][picked_visible], values[b, head, chosen][picked_visible])


def test_pooling_averages_visible_tokens_and_masks_empty_groups():
    keys, values, visible = random_tokens()
    k, v, m = select_by_pooling(keys, values, visible, 4)
    t = keys.shape[2]
    for g in range(t // 4):
        weights = visible[1, 0, g * 4 : (g + 1) * 4, 0].float()
        expected = (keys[1, :, g * 4 : (g + 1) * 4] * weights[:, None]).sum(1) / (weights.sum() + 1e-6)
        torch.testing.assert_close(k[1, :, g], expected)
        assert bool(m[1, 0, g, 0]) == bool(weights.sum() > 0)
    assert not m[1, 0, -1, 0] and m[0].all()


@pytest.mark.parametrize("factor", [2, 4])
def test_stride_and_block_stride_pick_the_specified_tokens(factor):
    keys, values, visible = random_tokens(h=6)
    block_size = 8
    k, _, _ = select_by_stride(keys, values, visible, factor)
    for head in range(6):
        assert torch.equal(k[:, head], keys[:, head, head % factor :: factor])
    k, _, _ = select_by_block_stride(keys, values, visible, factor, block_size)
    per_block = block_size // factor
    for head in range(6):
        start = (head * per_block) % block_size
        picks = [b + start + j for b in range(0, keys.shape[2], block_size) for j in range(per_block)]
        assert torch.equal(k[:, head], keys[:, head, picks])


def selector_config(sparsity_type, sparsity_factor, chunk, lsh_num_pre_rounds=1):
    """The fields a selector reads, with min(block_size, sparse_block_size) = `chunk`."""
    return SimpleNamespace(
        sparsity_type=sparsity_type, sparsity_factor=sparsity_factor, block_size=chunk, sparse_block_size=2 * chunk,
        lsh_num_pre_rounds=lsh_num_pre_rounds, lsh_seed=0,
    )  # fmt: skip


def one_head(*rows):
    """(1, 1, t, d) from t rows of d numbers."""
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, len(rows), -1)


def test_bos_pooling_weighs_each_group_by_the_first_query_as_the_spec_says():
    # Spec 5.7, by hand: scores against the first query q = (1, 0) are (0, ln 3) in group 0 and (1, 1) in group 1,
    # so the softmax weights are (1/4, 3/4) and (1/2, 1/2).
    ln3 = torch.log(torch.tensor(3.0)).item()
    keys = one_head([0.0, 0.0], [ln3, 0.0], [1.0, 1.0], [1.0, -1.0])
    values = one_head([4.0, 0.0], [0.0, 4.0], [2.0, 2.0], [6.0, 6.0])
    first_query = one_head([1.0, 0.0])
    config = selector_config("bos_pooling", 2, 4)
    every = torch.ones(1, 1, 4, 1, dtype=torch.bool)
    k, v, m = select_sparse_tokens(keys, values, every, first_query, config, None)
    torch.testing.assert_close(k, one_head([0.75 * ln3, 0.0], [1.0, 0.0]))
    torch.testing.assert_close(v, one_head([1.0, 3.0], [4.0, 4.0]))
    assert m.all()
    # A masked token gets no weight; a group made only of padding is pooled evenly and stays visible (the quirk).
    last_masked = torch.tensor([True, True, True, False]).view(1, 1, 4, 1)
    _, v, m = select_sparse_tokens(keys, values, last_masked, first_query, config, None)
    torch.testing.assert_close(v, one_head([1.0, 3.0], [2.0, 2.0]))
    padding_group = torch.tensor([True, True, False, False]).view(1, 1, 4, 1)
    _, v, m = select_sparse_tokens(keys, values, padding_group, first_query, config, None)
    torch.testing.assert_close(v, one_head([1.0, 3.0], [4.0, 4.0]))
    assert m.all()


@pytest.mark.parametrize("pre_rounds", [0, 1, 2])
def test_lsh_averages_the_tokens_of_each_bucket_as_the_spec_says(pre_rounds):
    # Spec 5.5: a key and its opposite always hash to different buckets (the bucket is the argmax over the
    # projections and their negatives) and equal keys to the same one, whatever the random planes and rounds.
    # Chunks of 4 tokens, f = 2: two buckets per chunk.
    a = [1.0, 2.0]
    minus_a = [-1.0, -2.0]
    keys = one_head(a, minus_a, a, minus_a, a, a, a, a)
    values = one_head([1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [6.0, 6.0])
    visible = torch.tensor([True, True, True, True, True, True, False, True]).view(1, 1, 8, 1)
    config = selector_config("lsh", 2, 4, pre_rounds)
    k, v, m = select_sparse_tokens(keys, values, visible, None, config, 0)

    def buckets(chunk):  # the chunk's (key, value, visible) per bucket, in a fixed order
        rows = [(tuple(k[0, 0, i].tolist()), tuple(v[0, 0, i].tolist()), bool(m[0, 0, i])) for i in chunk]
        return sorted(rows, key=lambda row: (row[2], row[0]))

    # Chunk 0: tokens {0, 2} and {1, 3}, averaged. Chunk 1: four equal keys in one bucket, the masked token left
    # out of its average; the other bucket is empty, masked, and zero.
    assert buckets([0, 1]) == sorted([((-1.0, -2.0), (0.0, 3.0), True), ((1.0, 2.0), (2.0, 0.0), True)],
                                     key=lambda row: (row[2], row[0]))  # fmt: skip
    assert buckets([2, 3]) == [((0.0, 0.0), (0.0, 0.0), False), ((1.0, 2.0), (3.0, 3.0), True)]


def test_lsh_with_sparse_block_size_equal_to_the_factor_is_bos_pooling():
    keys, values, visible = random_tokens()
    first_query = keys[:, :, :1]
    config = SimpleNamespace(**{**vars(selector_config("lsh", 4, 8)), "sparse_block_size": 4})
    as_lsh = select_sparse_tokens(keys, values, visible, first_query, config, 0)
    as_bos = select_sparse_tokens(keys, values, visible, first_query, SimpleNamespace(
        **{**vars(config), "sparsity_type": "bos_pooling"}), 0)  # fmt: skip
    for ours, expected in zip(as_lsh, as_bos):
        assert torch.equal(ours, expected)


def test_the_tables_hold_exactly_the_names_that_configs_accept():
    assert set(attention.SELECTORS) == set(SPARSITY_TYPES)
    assert set(KERNELS) == set(LSG_KERNELS) - {"auto"}
    assert all(kernel.name == name for name, kernel in KERNELS.items())
    with pytest.raises(ImportError, match="'typo'"):
        named_table(SPARSITY_TYPES, {**attention.SELECTORS, "typo": None})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity_type", ["norm", "lsh"])
def test_norm_and_lsh_select_in_float32_under_half_precision(sparsity_type, dtype):
    # Half-precision keys must be selected as their float32 values are: norms compared, hashes computed and
    # merged in float32 (in half precision, nearly equal norms round to ties and projections near a hyperplane
    # change sign).
    keys, values, visible = random_tokens(t=256, d=64)
    keys, values = keys.to(dtype), values.to(dtype)
    config = selector_config(sparsity_type, 4, 32)
    ours = select_sparse_tokens(keys, values, visible, None, config, 0)
    in_float32 = select_sparse_tokens(keys.float(), values.float(), visible, None, config, 0)
    assert ours[0].dtype == dtype
    for x, expected in zip(ours, in_float32):
        assert torch.equal(x, expected.to(x.dtype))


def half_precision_error(sparsity_type, dtype):
    """Relative L2 error of a bfloat16 / float16 encoder's output against float32, ~1,000 tokens."""
    config = tiny_config(
        sparsity_type=sparsity_type, d_model=64, encoder_layers=2, encoder_ffn_dim=128, block_size=32,
        sparse_block_size=32, sparsity_factor=4, dropout=0.0, attention_dropout=0.0, lsh_seed=0,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = LSGBartModel(config).encoder.eval()
    input_ids, attention_mask = padded_batch([1000, 700])
    with torch.no_grad():
        expected = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out = encoder.to(dtype)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return ((out.float() - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_selector_keeps_half_precision_error_bounded(dtype):
    errors = {sparsity_type: half_precision_error(sparsity_type, dtype) for sparsity_type in SPARSITY_TYPES}
    rounding = {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype]  # a few units of the dtype's rounding
    assert all(error < rounding for error in errors.values()), errors
    others = max(error for name, error in errors.items() if name not in ("norm", "lsh"))
    assert errors["norm"] <= 2 * others and errors["lsh"] <= 2 * others, errors


def literal_lsg(config, query, key, value, visible, scale):
    """LSG-SPEC section 4 read literally: for every block, list its keys one index at a time."""
    query = query * scale
    n, h, T, d = query.shape
    G, bs, f, sbs = config.num_global_tokens, config.block_size, config.sparsity_factor, config.sparse_block_size
    t = T - G
    per_block = bs // f
    scores_mask = visible[:, 0, :, 0]  # (n, T)
    out = torch.empty_like(query)
    full = (query[:, :, :G] @ key.transpose(-1, -2)).masked_fill(~scores_mask[:, None, None], float("-inf"))
    out[:, :, :G] = full.softmax(-1) @ value
    sparse = select_sparse_tokens(
        key[:, :, G:], value[:, :, G:], visible[:, :, G:], query[:, :, G : G + 1], config, None
    )
    assert (sparse is None) == (config.sparsity_type == "none")
    if sparse is not None:
        sparse_k, sparse_v, sparse_m = sparse
        sparse_m = sparse_m.expand(n, h, -1, 1)[..., 0]
    rest_m = visible[:, 0, G:, 0]
    after_start_shift = 2 if per_block % 2 == 1 else 0
    for i in range(t // bs):
        for b in range(n):
            for head in range(h):
                ks, vs, ms = [key[b, head, :G]], [value[b, head, :G]], [torch.ones(G, dtype=torch.bool)]
                if sparse is not None and sbs > 0:
                    starts = [(i - 1) * per_block - sbs, (i + 2) * per_block - after_start_shift]
                    for p in [s + j for s in starts for j in range(sbs)]:
                        inside = 0 <= p < t // f
                        ks.append(sparse_k[b, head, p : p + 1] if inside else torch.zeros(1, key.shape[-1]))
                        vs.append(sparse_v[b, head, p : p + 1] if inside else torch.zeros(1, key.shape[-1]))
                        ms.append(sparse_m[b, head, p : p + 1] if inside else torch.zeros(1, dtype=torch.bool))
                for p in range((i - 1) * bs, (i + 2) * bs):
                    inside = 0 <= p < t
                    ks.append(key[b, head, G + p : G + p + 1] if inside else torch.zeros(1, key.shape[-1]))
                    vs.append(value[b, head, G + p : G + p + 1] if inside else torch.zeros(1, key.shape[-1]))
                    ms.append(rest_m[b, p : p + 1] if inside else torch.zeros(1, dtype=torch.bool))
                k_set, v_set, m_set = torch.cat(ks), torch.cat(vs), torch.cat(ms)
                q = query[b, head, G + i * bs : G + (i + 1) * bs]
                scores = (q @ k_set.T).masked_fill(~m_set, float("-inf"))
                out[b, head, G + i * bs : G + (i + 1) * bs] = scores.softmax(-1) @ v_set
    return out


GEOMETRIES = [(8, 2, 8), (8, 2, 3), (4, 4, 2), (12, 4, 6)]  # (4, 4) and (12, 4): odd tokens per block, the quirk


def norm_accepts(block_size, sparsity_factor, sparse_block_size):
    chunk = min(block_size, sparse_block_size)
    return block_size % chunk == 0 and chunk % sparsity_factor == 0


def layer_inputs(block_size, seed=1):
    """Queries, keys and values of 8 blocks and 2 global tokens, row 1 padded; keys and values also with the
    margins that the layer gives them (a block around the non-global tokens)."""
    generator = torch.Generator().manual_seed(seed)
    n, h, t, d = 2, 4, 8 * block_size, 8
    T = t + 2
    query, key, value = (torch.randn(n, h, T, d, generator=generator) for _ in range(3))
    visible = torch.ones(n, 1, T, 1, dtype=torch.bool)
    visible[1, :, T - block_size - 3 :] = False
    margin = max(block_size - 2, 0)
    with_margins = tuple(F.pad(x, (0, 0, margin, block_size)) for x in (key, value))
    return query, key, value, visible, margin, with_margins


def attend_with(config, kernel, query, key, value, visible, margin, scale=0.35):
    """`lsg_attention` of one layer's inputs with the named kernel, as the encoder would choose it here."""
    settings = AttentionSettings(config, choose_kernel(kernel, query, 0.0), scale, 0.0)
    return lsg_attention(AttentionInputs(query, key, value, visible, margin), settings)


def geometry_config(sparsity_type, block_size, sparsity_factor, sparse_block_size):
    return tiny_config(block_size=block_size, sparsity_factor=sparsity_factor, sparse_block_size=sparse_block_size,
                       sparsity_type=sparsity_type, num_global_tokens=2)


SPEC_CASES = [
    (sparsity_type, *geometry)
    for sparsity_type in ["none", "norm", "pooling", "stride", "block_stride", "bos_pooling"]
    for geometry in GEOMETRIES
    if sparsity_type != "norm" or norm_accepts(*geometry)
]


@pytest.mark.parametrize(
    "sparsity_type, block_size, sparsity_factor, sparse_block_size",
    [case for case in SPEC_CASES if case[0] in ("norm", "stride") or case[1:] == GEOMETRIES[-1]],
)
def test_reference_kernel_follows_the_literal_spec(sparsity_type, block_size, sparsity_factor, sparse_block_size):
    config = geometry_config(sparsity_type, block_size, sparsity_factor, sparse_block_size)
    query, key, value, visible, margin, (key_m, value_m) = layer_inputs(block_size)
    ours = attend_with(config, "reference", query, key_m, value_m, visible, margin)
    expected = literal_lsg(config, query, key, value, visible, 0.35).transpose(1, 2)  # (n, T, h, d)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k not in ("reference", "cpu_bf16_scores")])
@pytest.mark.parametrize("sparsity_type, block_size, sparsity_factor, sparse_block_size", SPEC_CASES)
def test_every_kernel_follows_the_reference_on_every_geometry(
    kernel, sparsity_type, block_size, sparsity_factor, sparse_block_size
):
    config = geometry_config(sparsity_type, block_size, sparsity_factor, sparse_block_size)
    query, _, _, visible, margin, (key_m, value_m) = layer_inputs(block_size)
    with torch.no_grad():
        if kernel_problem(kernel, query, 0.0):  # cpu_two_part where the CPU kernel failed its probe
            with pytest.raises(ValueError, match=f"lsg_kernel='{kernel}' cannot run here"):
                choose_kernel(kernel, query, 0.0)
            return
        ours, expected = (
            attend_with(config, name, query, key_m, value_m, visible, margin)
            for name in (kernel, "reference")
        )
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def model_pair(sparsity_type, kernel, dtype=torch.float32):
    """The same weights with the `reference` kernel and with `kernel`."""
    reference = LSGBartModel(tiny_config(sparsity_type=sparsity_type, lsh_seed=3, lsg_kernel="reference")).eval()
    other = LSGBartModel(tiny_config(sparsity_type=sparsity_type, lsh_seed=3, lsg_kernel=kernel)).eval()
    other.load_state_dict(reference.state_dict())
    return reference.to(dtype), other.to(dtype)


@pytest.mark.parametrize("kernel", TRAINING_KERNELS)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_every_kernel_matches_the_reference_forward_and_backward(sparsity_type, kernel):
    reference, other = model_pair(sparsity_type, kernel)
    input_ids, attention_mask = padded_batch([300, 237])
    problem = kernel_problem(kernel, torch.ones(1), 0.0)
    if problem:  # forcing a kernel that cannot run here is refused, naming it
        with pytest.raises(ValueError, match=f"lsg_kernel='{kernel}' cannot run here"):
            other.encoder(input_ids=input_ids, attention_mask=attention_mask)
        return
    results = []
    for model in (reference, other):
        out = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out.pow(2).mean().backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((out.detach(), grads))
    (ref_out, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == grads.keys() and any("q_proj" in name for name in ref_grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_auto_inference_matches_the_reference(sparsity_type):
    reference, auto = model_pair(sparsity_type, "auto")
    input_ids, attention_mask = padded_batch([300, 150])  # row 1: whole blocks of padding
    with torch.inference_mode():
        ref_out, out = (
            m.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state for m in (reference, auto)
        )
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


def test_auto_choice_follows_device_dtype_training_and_dropout():
    cpu32, cpu16 = torch.ones(1), torch.ones(1, dtype=torch.bfloat16)
    two_part = "cpu_two_part" if kernels.CPU_FLASH_ATTENTION else "sdpa"
    assert kernels.choose_kernel("auto", cpu32, 0.0).name == two_part
    assert kernels.choose_kernel("auto", cpu32, 0.1).name == "sdpa"  # attention dropout: the public kernel
    assert kernels.choose_kernel("auto", cpu32, 0.0, eager_attention=True).name == "eager"
    with torch.no_grad():
        assert kernels.choose_kernel("auto", cpu16, 0.0).name == ("cpu_bf16_scores" if kernels.CPU_BF16 else two_part)
    assert kernels.choose_kernel("auto", cpu16, 0.0).name == two_part  # with autograd
    chosen = kernels.choose_kernel("sdpa", cpu32, 0.1)
    assert chosen.name == "sdpa" and chosen.attend_blocks is kernels.sdpa_kernel
    # The CPU tuning is decided with the kernel: token chunks, and key sets rebuilt in the backward pass.
    assert chosen.cpu_tuned and chosen.token_chunk == kernels.TOKEN_CHUNK and chosen.recompute_key_sets
    with torch.no_grad():
        assert not kernels.choose_kernel("sdpa", cpu32, 0.0).recompute_key_sets
    with pytest.raises(ValueError, match="lsg_kernel='cpu_two_part' cannot run here.*dropout"):
        kernels.choose_kernel("cpu_two_part", cpu32, 0.1)
    with pytest.raises(ValueError, match="lsg_kernel='cpu_bf16_scores' cannot run here"):
        kernels.choose_kernel("cpu_bf16_scores", cpu32, 0.0)
    with pytest.raises(ValueError, match="lsg_kernel='flex' cannot run here: FlexAttention has no attention dropout"):
        kernels.choose_kernel("flex", cpu32, 0.1)


def test_auto_is_the_public_sdpa_kernel_on_cuda(monkeypatch):
    """FlexAttention has not been measured on a GPU: on CUDA "auto" stays on public ops, for every dtype and mode,
    and `flex` asked for by name needs Triton (torch.compile's GPU backend)."""
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    cuda = {dtype: SimpleNamespace(device=torch.device("cuda"), is_cuda=True, dtype=dtype) for dtype in dtypes}
    for query in cuda.values():
        for dropout in (0.0, 0.1):
            assert kernels.choose_kernel("auto", query, dropout).name == "sdpa"
            with torch.no_grad():
                assert kernels.choose_kernel("auto", query, dropout).name == "sdpa"
    assert kernels.choose_kernel("auto", cuda[torch.float32], 0.0, eager_attention=True).name == "eager"
    on_cuda = kernels.choose_kernel("sdpa", cuda[torch.float32], 0.0)
    assert not on_cuda.cpu_tuned and on_cuda.token_chunk is None and not on_cuda.recompute_key_sets
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    with pytest.raises(ValueError) as refused:
        kernels.choose_kernel("flex", cuda[torch.float32], 0.0)
    message = str(refused.value)
    assert "\n" not in message and "lsg_kernel='flex' cannot run here" in message and "Triton" in message
    if kernels.flex_attention is not None:
        monkeypatch.setattr(kernels, "triton_available", lambda: True)
        assert kernels.choose_kernel("flex", cuda[torch.float32], 0.0).name == "flex"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_part_attention_equals_attention_over_the_union(dtype):
    n, h, nb, q, d = 2, 3, 4, 8, 16
    generator = torch.Generator().manual_seed(0)

    def part(keys, heads, per_head_mask):
        key, value = (torch.randn(n, heads, nb, keys, d, generator=generator).to(dtype) for _ in range(2))
        visible = torch.rand(n, h if per_head_mask else 1, nb, keys, 1, generator=generator) > 0.3
        return key, value, visible

    local = part(24, h, False)
    local[2][0, :, 1] = False  # a block whose local window is entirely masked
    context = [part(1, 1, False), part(5, h, True), part(5, h, True)]
    context[0][2][:] = True  # the global token is always visible
    query = torch.randn(n * h, nb, q, d, generator=generator).to(dtype)

    def run(split):
        leaves = [query, *[x for p in [local, *context] for x in p[:2]]]
        leaves = [x.detach().float().requires_grad_() if not split else x.detach().requires_grad_() for x in leaves]
        qq, lk, lv, *rest = leaves
        parts = [(lk, lv, local[2])] + [(rest[2 * i], rest[2 * i + 1], c[2]) for i, c in enumerate(context)]
        if split:
            out = attend_in_two_parts(qq, key_sets(parts[0], parts[1:], n, h), 0.25)
        else:  # the straightforward path over the joined key set, in float32 on the same inputs
            key, value, visible = key_sets(parts[0], parts[1:], n, h).joined()
            out = attend(qq, key, value, visible, 0.0, False, 0.25)
        out.float().pow(2).sum().backward()
        return out.float(), [x.grad.float() for x in leaves]

    (split_out, split_grads), (union_out, union_grads) = run(True), run(False)
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(split_out, union_out, atol=tolerance, rtol=tolerance)
    for split_grad, union_grad in zip(split_grads, union_grads):
        torch.testing.assert_close(split_grad, union_grad, atol=tolerance * 10, rtol=tolerance * 10)


@pytest.mark.parametrize("scores_in_cache", [2**21, 300])  # 300: one block at a time
def test_bf16_written_out_attention_equals_attention_over_the_union(scores_in_cache, monkeypatch):
    monkeypatch.setattr(kernels, "SCORES_IN_CACHE", scores_in_cache)
    B, nb, q, k, d = 6, 5, 8, 20, 16
    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(B, nb, s, d, generator=generator).bfloat16() for s in (q, k, k))
    visible = torch.rand(B, nb, 1, k, generator=generator) > 0.3
    visible[:, :, :, 0] = True
    out = attend_bf16_written_out(query, key, value, visible, 0.25)
    expected = attend(query.float(), key.float(), value.float(), visible, 0.0, False, 0.25)
    assert out.dtype == torch.bfloat16 and out.shape == (B, nb, q, d)
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_bf16_scores_kernel_matches_reference_in_inference(sparsity_type):
    reference, fast = model_pair(sparsity_type, "cpu_bf16_scores", torch.bfloat16)
    input_ids, attention_mask = padded_batch([300, 150])
    with torch.inference_mode():
        if not kernels.CPU_BF16:  # forcing it on a CPU without bf16 instructions is refused
            with pytest.raises(ValueError, match="lsg_kernel='cpu_bf16_scores' cannot run here"):
                fast.encoder(input_ids=input_ids, attention_mask=attention_mask)
            return
        ref_out, fast_out = (
            m.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state for m in (reference, fast)
        )
    assert torch.isfinite(fast_out).all()
    # Both round to bfloat16 at different steps: ~2e-4 relative L2 apart. Unmasked margins or padding: > 1.5e-3.
    relative_l2 = (fast_out.float() - ref_out.float()).norm() / ref_out.float().norm()
    assert relative_l2 < 1e-3


@pytest.mark.parametrize("sparsity_type", ["norm", "pooling"])
def test_chunked_processing_of_long_inputs_changes_nothing(sparsity_type, monkeypatch):
    model = LSGBartModel(tiny_config(sparsity_type=sparsity_type)).eval()
    input_ids, attention_mask = padded_batch([600, 450])
    results = []
    for token_chunk in (100_000, 64):  # one chunk; then groups of 4 blocks and chunks of 64 tokens
        monkeypatch.setattr(kernels, "TOKEN_CHUNK", token_chunk)
        out = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out.pow(2).mean().backward()
        results.append((out.detach(), model.encoder.layers[0].fc1.weight.grad.clone()))
        model.zero_grad()
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-5, rtol=1e-4)


def test_lsh_seed_makes_outputs_reproducible():
    input_ids, attention_mask = padded_batch([300, 237])
    seeded = LSGBartModel(tiny_config(sparsity_type="lsh", lsh_seed=7)).eval()
    other_seed = LSGBartModel(tiny_config(sparsity_type="lsh", lsh_seed=8)).eval()
    other_seed.load_state_dict(seeded.state_dict())
    with torch.no_grad():
        first, second, third = (
            model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            for model in (seeded, seeded, other_seed)
        )
    assert torch.equal(first, second)
    assert not torch.allclose(first, third)


# The CUDA path compiles its block mask and its attention (`kernels.compiled`). Input lengths change from batch to
# batch: one static compile per length would reach dynamo's recompile limit and fall back to the eager forms,
# which write the whole mask and every score out.
needs_flex = pytest.mark.skipif(kernels.flex_attention is None, reason="FlexAttention needs PyTorch 2.5 or newer")


@needs_flex
def test_compiled_block_mask_matches_eager_and_compiles_once_for_many_lengths():
    from torch._dynamo.utils import counters

    config = tiny_config()
    generator = torch.Generator().manual_seed(0)
    n, h = 2, 2
    compiles = []
    for blocks in (10, 14, 18):  # above FlexAttention's block of 128 tokens, as long inputs are
        T, S = config.num_global_tokens + blocks * config.block_size, blocks * config.block_size // 2
        visible = torch.ones(n, T, dtype=torch.bool)
        visible[1, -5:] = False  # row 1 is padded
        sees = attention.lsg_mask(config, visible, torch.rand(n, h, S, generator=generator) > 0.2)
        block_mask = kernels.compiled(kernels.create_block_mask)(sees, n, h, T, T + S, device="cpu")
        expected = kernels.create_block_mask(sees, n, h, T, T + S, device="cpu")
        assert torch.equal(block_mask.to_dense(), expected.to_dense())
        compiles.append(counters["stats"]["unique_graphs"])
    assert compiles[1] == compiles[-1]  # after the second length, no new compile


@needs_flex
def test_compiled_flex_attention_compiles_once_for_many_lengths():
    from torch._dynamo.utils import counters

    generator = torch.Generator().manual_seed(0)

    def sees(b, h, q, k):
        return (q // 16 - k // 16).abs() <= 1  # a band of neighbouring blocks

    compiles = []
    for length in (128, 192, 256):
        query, key, value = (torch.randn(1, 2, length, 16, generator=generator) for _ in range(3))
        block_mask = kernels.create_block_mask(sees, 1, 2, length, length, device="cpu")
        expected = kernels.flex_attention(query, key, value, block_mask=block_mask)
        out = kernels.compiled(kernels.flex_attention)(query, key, value, block_mask=block_mask)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        compiles.append(counters["stats"]["unique_graphs"])
    assert compiles[1] == compiles[-1]  # after the second length, no new compile
