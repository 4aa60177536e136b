"""The attention kernels of LSG-BART and the CPU tuning, behind one choice (`choose_kernel`).

A kernel computes the attention of LSG's query blocks over their key sets (`lsg_attention.py` builds both). Two
families share one registry, `KERNELS`:
- sequence kernels see every query row and a key bank (all tokens, then the sparse tokens) with a mask function
  of (batch, head, query, key): `reference` (the dense mask written out, the readable ground truth) and `flex`
  (FlexAttention with a block mask built from the same function: no key-set copies, for GPUs);
- block kernels see groups of blocks with their key sets as views (global, sparse before, sparse after, local):
  `eager` (scores written out), `sdpa` (PyTorch's public fused attention over the joined key sets),
  `cpu_two_part` (PyTorch's CPU flash kernel over the local window and the rest, merged by log-sum-exp) and
  `cpu_bf16_scores` (bfloat16 scores written out a few blocks at a time).

Private and optional ops are probed once on tiny inputs against public ops and used only where the probe passes
(builds and CPUs differ: oneDNN's bfloat16 products need AVX-512, for instance); `LSG_BART_PUBLIC_OPS=1` turns
them all off. Under torch.compile and torch.export (ONNX) only public ops run.

Shapes: n batch, h heads, T tokens with the global ones, g blocks in a group, bs block size, k keys, d head dim.
"""

import os

import torch
import torch.nn.functional as F
from torch import nn

from .compat import autocast_enabled, create_block_mask, flex_attention, tracing, triton_available

# Long inputs are processed in chunks of about this many tokens on CPU (groups of blocks in the attention, then
# the per-token work after it), so that intermediates stay in cache and memory does not grow with the length.
TOKEN_CHUNK = 2048

# Written-out attention scores are computed for as many blocks at a time as keep about this many scores (4 MB in
# bfloat16), small enough to stay in cache.
SCORES_IN_CACHE = 2**21

# oneDNN's linear kernel is slower than MKL's for a few rows through a small weight (decoding): it is used from
# this many rows, or for weights of this many elements (a language-modelling head).
ONEDNN_MIN_ROWS = 32
ONEDNN_MIN_WEIGHT = 2**24

# ---------------------------------------------------------------------------------------------------------------
# Optional kernels: each is probed once on tiny inputs against public ops, and used only where the probe passes
# (builds and CPUs differ: oneDNN's bfloat16 products need AVX-512, for instance). LSG_BART_PUBLIC_OPS=1 turns
# them all off, leaving public PyTorch ops with the same results.
# ---------------------------------------------------------------------------------------------------------------

PUBLIC_OPS_ONLY = os.environ.get("LSG_BART_PUBLIC_OPS", "") not in ("", "0")


def probe(check):
    """Whether `check()` returns True; False if it raises (a missing op, an unsupported dtype or CPU) or when
    `LSG_BART_PUBLIC_OPS` is set."""
    if PUBLIC_OPS_ONLY:
        return False
    try:
        return bool(check())
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):  # TypeError: an older op's signature
        return False


def find_onednn_linear(dtype=torch.float32):
    """PyTorch's oneDNN linear kernel (`mkldnn::_linear_pointwise`) on x86 processors where it computes a small
    product in `dtype` right, or None (then `F.linear` is used)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX"):  # "AVX2", "AVX512": x86
        return None

    def check():
        kernel = torch.ops.mkldnn._linear_pointwise.default
        ones = [torch.ones(shape, dtype=dtype) for shape in ((2, 3), (4, 3), (4,))]
        return torch.equal(kernel(*ones, "none", [], "").float(), torch.full((2, 4), 4.0))  # (2, 4), all 4

    return torch.ops.mkldnn._linear_pointwise.default if probe(check) else None


def cpu_flash_attention_works():
    """Whether PyTorch's fused CPU attention kernel, forward and backward, with a float mask, matches the
    written-out attention (`TwoPartAttention` calls the kernel's private entry points directly)."""
    generator = torch.Generator().manual_seed(0)
    query, key, value, grad = (torch.randn(1, 2, 5, 4, generator=generator) for _ in range(4))
    bias = torch.zeros(1, 1, 1, 5).index_fill_(-1, torch.tensor([1]), torch.finfo(torch.float32).min)
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, attn_mask=bias)[:2]
    grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad, query, key, value, out, lse, 0.0, False, attn_mask=bias
    )
    leaves = [x.clone().requires_grad_() for x in (query, key, value)]
    scores = leaves[0] @ leaves[1].transpose(-1, -2) * 0.5 + bias
    expected = scores.softmax(-1) @ leaves[2]
    expected.backward(grad)
    pairs = [(out, expected), *zip(grads, (leaf.grad for leaf in leaves))]
    return all(torch.allclose(a, b, atol=1e-5) for a, b in pairs)


def cpu_has_bf16_instructions():
    """Whether bfloat16 products are fast on this CPU (AVX-512 BF16 or AMX): without these instructions they are
    emulated, several times slower than float32, and oneDNN refuses them."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return native and find_onednn_linear(torch.bfloat16) is not None


ONEDNN_LINEAR = find_onednn_linear()
CPU_FLASH_ATTENTION = probe(cpu_flash_attention_works)
CPU_BF16 = probe(cpu_has_bf16_instructions)
UNFOLD_BACKWARD = probe(lambda: torch.ops.aten.unfold_backward(torch.ones(1, 2, 3), (1, 5), 1, 3, 2).sum() == 6)

def chunk_starts(total, size):
    """The first index of each `size`-long chunk of `total`. One chunk is `(0,)`, not a `range`: a `range` over a
    length that torch.export keeps symbolic would fix the exported graph to the example input's length."""
    return (0,) if size >= total else range(0, total, size)


def cpu_tuning(x):
    """Whether the CPU-specific paths apply to tensor `x`: on CPU, and not while tracing."""
    return x.device.type == "cpu" and not tracing()


# ---------------------------------------------------------------------------------------------------------------
# Linear layers
# ---------------------------------------------------------------------------------------------------------------


def onednn_linear(x, weight, bias=None, activation="none"):
    """`activation(x @ weight.T + bias)` in one oneDNN call; `activation` is "none" or "gelu" (the exact, erf one)."""
    return ONEDNN_LINEAR(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


def uses_onednn(x, weight):
    """Whether `linear` sends `x @ weight.T` to oneDNN: plain float32 tensors on CPU (not tensor subclasses such as
    quantised weights, which dispatch `F.linear` themselves), oneDNN enabled, no autocast (it picks its own dtype),
    not while tracing, and a product large enough (a few rows through a small weight, as in a decoding step, go
    faster through MKL)."""
    return (
        ONEDNN_LINEAR is not None
        and not tracing()
        and x.device.type == "cpu"
        and (x.numel() >= ONEDNN_MIN_ROWS * x.shape[-1] or weight.numel() >= ONEDNN_MIN_WEIGHT)
        and x.dtype == weight.dtype == torch.float32
        and type(x) is torch.Tensor
        and type(weight) in (torch.Tensor, nn.Parameter)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not autocast_enabled("cpu")
    )


class OneDNNLinear(torch.autograd.Function):
    """`F.linear` in float32 through oneDNN, forward and backward.

    PyTorch sends float32 matrix products to MKL, which on some CPUs (AMD's among them) runs without AVX-512 and
    reaches a lower rate than oneDNN on the same cores (docs/benchmark.md). The arithmetic is float32 either way.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x, weight, bias)  # (..., out)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        grad_rows = grad_out.reshape(-1, grad_out.shape[-1])  # (m, out)
        if ctx.needs_input_grad[0]:
            grad_x = onednn_linear(grad_out, weight.t())  # (..., in)
        if ctx.needs_input_grad[1]:
            grad_weight = weight_gradient(grad_rows, x.reshape(-1, x.shape[-1]))  # (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_rows.sum(0)  # (out,)
        return grad_x, grad_weight, grad_bias


def weight_gradient(grad_rows, input_rows):
    """A linear layer's weight gradient `grad_rows.T @ input_rows`: (m, out), (m, in) -> (out, in).

    oneDNN copies a transposed first operand into a contiguous one, and such copies are slow; the product is
    taken in whichever order transposes the narrower of the two.
    """
    if grad_rows.shape[1] > input_rows.shape[1]:
        return linear(input_rows.t(), grad_rows.t()).t()  # (in, out) -> (out, in), a view
    return linear(grad_rows.t(), input_rows.t())


def linear(x, weight, bias=None):
    """`F.linear(x, weight, bias)`, through oneDNN where `uses_onednn(x, weight)`."""
    if not uses_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias)):
        return OneDNNLinear.apply(x, weight, bias)
    return onednn_linear(x, weight, bias)


def linear_gelu(x, weight, bias):
    """`F.gelu(F.linear(x, weight, bias))`, in one oneDNN call where `uses_onednn(x, weight)`; without autograd."""
    if uses_onednn(x, weight):
        return onednn_linear(x, weight, bias, "gelu")
    return F.gelu(F.linear(x, weight, bias))


class RecomputedFeedForward(torch.autograd.Function):
    """BART's feed-forward block without dropout, `fc2(gelu(fc1(x)))`, keeping only `x` for the backward pass.

    fc1's output is 4x wider than `x` and the largest tensor a layer would keep; the backward pass recomputes it
    with one product (a checkpoint would also run fc2 again).
    Inputs: x (..., d_model), fc1's weight (ffn, d_model) and bias, fc2's weight (d_model, ffn) and bias.
    """

    @staticmethod
    def forward(ctx, x, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        ctx.save_for_backward(x, fc1_weight, fc1_bias, fc2_weight)
        return linear(linear_gelu(x, fc1_weight, fc1_bias), fc2_weight, fc2_bias)  # (..., d_model)

    @staticmethod
    def backward(ctx, grad_out):
        x, fc1_weight, fc1_bias, fc2_weight = ctx.saved_tensors
        hidden = linear(x, fc1_weight, fc1_bias)  # (..., ffn)
        activated = F.gelu(hidden)
        grad_hidden = torch.ops.aten.gelu_backward(linear(grad_out, fc2_weight.t()), hidden)  # (..., ffn)
        del hidden
        grad_x, *grads = (None,) * 5

        def rows(t):
            return t.reshape(-1, t.shape[-1])  # (m, features)

        if ctx.needs_input_grad[3]:
            grads[2] = weight_gradient(rows(grad_out), rows(activated))  # (d_model, ffn)
        if ctx.needs_input_grad[4]:
            grads[3] = rows(grad_out).sum(0)
        if ctx.needs_input_grad[1]:
            grads[0] = weight_gradient(rows(grad_hidden), rows(x))  # (ffn, d_model)
        if ctx.needs_input_grad[2]:
            grads[1] = rows(grad_hidden).sum(0)
        if ctx.needs_input_grad[0]:
            grad_x = linear(grad_hidden, fc1_weight.t())  # (..., d_model)
        return grad_x, *grads


def is_plain_linear(layer):
    """True for an `nn.Linear` without hooks whose weight and bias are plain tensors: its weights can be used
    directly. Anything else (LoRA, quantised layers, torchao's tensor subclasses, hooks) is called as it is."""
    return (
        type(layer) is nn.Linear
        and not (layer._forward_hooks or layer._forward_pre_hooks)
        and all(type(t) in (torch.Tensor, nn.Parameter) for t in (layer.weight, layer.bias) if t is not None)
    )


def project(layer, x):
    """`layer(x)`, through `linear` when the layer is a plain `nn.Linear`."""
    return linear(x, layer.weight, layer.bias) if is_plain_linear(layer) else layer(x)


def dropout(x, p, training):
    """`F.dropout`. On CPU, `F.dropout` keeps its float noise for the backward pass; this keeps a boolean mask."""
    if training and 0 < p < 1 and cpu_tuning(x):
        return torch.native_dropout(x, p, True)[0]
    return F.dropout(x, p=p, training=training)


# ---------------------------------------------------------------------------------------------------------------
# Attending a set of keys
# ---------------------------------------------------------------------------------------------------------------


def attend(query, key, value, visible, dropout, use_sdpa, scale):
    """Softmax attention of queries (..., q, d) over keys (..., k, d); visible (..., 1|q, k) bool.

    `use_sdpa` runs PyTorch's fused kernel; otherwise scores, an additive mask and a softmax are written out.
    """
    if use_sdpa:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, dropout_p=dropout, scale=scale)
    scores = (query @ key.transpose(-1, -2)) * scale  # (..., q, k)
    scores = scores.masked_fill(~visible, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout)
    return probs @ value  # (..., q, d)


class TwoPartAttention(torch.autograd.Function):
    """Attention over the union of two key sets, each through PyTorch's fused CPU kernel, merged by log-sum-exp.

    The first set is the local window, an overlapping view of the keys that is never copied. The second set comes
    as pieces (global tokens, sparse windows) joined here, and joined again in the backward pass instead of being
    kept. The backward pass gives each set the merged output and log-sum-exp, so the kernel's own backward
    computes the union's gradient restricted to that set's keys, as flash attention does across key blocks.

    Inputs: query (B, nb, q, d) and the scale of its scores; local keys and values (B, nb, k, d) and float mask
    (B|1, nb, 1, k); the float mask of the other set (B|1, nb, 1, K), then its key pieces and its value pieces,
    each (B, nb, k_i, d).
    """

    @staticmethod
    def forward(ctx, query, scale, local_key, local_value, local_bias, context_bias, *context):
        pieces = len(context) // 2
        context_key, context_value = torch.cat(context[:pieces], dim=2), torch.cat(context[pieces:], dim=2)
        results = []
        for key, value, bias in ((local_key, local_value, local_bias), (context_key, context_value, context_bias)):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                query, key, value, attn_mask=bias, scale=scale
            )[:2]
            results.append((out, lse))  # (B, nb, q, d), (B, nb, q)
        (local_out, local_lse), (context_out, context_lse) = results
        lse = torch.logaddexp(local_lse, context_lse)  # (B, nb, q)
        # The local part's share of the softmax mass, exp(local_lse - lse), is this sigmoid.
        local_share = torch.sigmoid(local_lse - context_lse).unsqueeze(-1).to(query.dtype)  # (B, nb, q, 1)
        out = context_out.lerp_(local_out, local_share)  # (B, nb, q, d)
        ctx.scale = scale
        ctx.save_for_backward(query, local_key, local_value, local_bias, context_bias, out, lse, *context)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, local_key, local_value, local_bias, context_bias, out, lse, *context = ctx.saved_tensors
        pieces = len(context) // 2
        context_key, context_value = torch.cat(context[:pieces], dim=2), torch.cat(context[pieces:], dim=2)
        grad_out = grad_out.contiguous()
        grads = [
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                grad_out, query, key, value, out, lse, 0.0, False, attn_mask=bias, scale=ctx.scale
            )
            for key, value, bias in ((local_key, local_value, local_bias), (context_key, context_value, context_bias))
        ]
        (local_q, local_k, local_v), (context_q, context_k, context_v) = grads
        sizes = [piece.shape[2] for piece in context[:pieces]]
        return (
            local_q + context_q,
            None,
            local_k,
            local_v,
            None,
            None,
            *context_k.split(sizes, dim=2),
            *context_v.split(sizes, dim=2),
        )


def attend_in_two_parts(query, local, context, scale):
    """`TwoPartAttention` of (n*h, nb, bs, d) block queries over the local window and the other key sets.

    `local` is one (key, value, visible) part and `context` a list of them, as for `batch_key_sets`.
    """
    n_h = query.shape[0]
    n = local[2].shape[0]
    local_key, local_value, local_visible = flat_key_sets([local], n, n_h // n)
    context_keys, context_values, context_visible = flat_key_sets(context, n, n_h // n)

    def bias(visible):  # the kernel wants a float mask
        zeros = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
        return zeros.masked_fill(~visible, torch.finfo(query.dtype).min)

    return TwoPartAttention.apply(
        query, scale, local_key[0], local_value[0], bias(local_visible), bias(context_visible), *context_keys, *context_values
    )


def attend_bf16_written_out(query, key, value, visible, scale):
    """Attention of bfloat16 block queries (B, g, q, d) over keys (B, g, k, d), visible (B, g, 1, k), with the
    scores written out, a few blocks at a time so that they stay in cache.

    For inference on CPU: the batched products go to oneDNN's bfloat16 kernel, and the three steps together take
    less time than PyTorch's fused kernel, which is no faster in bfloat16 than in float32 (its softmax
    runs in float32). Its relative L2 error against float32 is the fused kernel's in bfloat16 (benchmarks/).
    """
    B, g, q, d = query.shape
    bias = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
    bias = bias.masked_fill_(~visible, torch.finfo(query.dtype).min).flatten(0, 1)  # (B*g, 1, k)
    query = (query * scale).flatten(0, 1)  # (B*g, q, d)
    key, value = key.flatten(0, 1), value.flatten(0, 1)  # (B*g, k, d)
    rows = max(1, SCORES_IN_CACHE // (q * key.shape[1]))
    outputs = []
    for first in range(0, B * g, rows):
        part = slice(first, first + rows)
        scores = query[part] @ key[part].transpose(-1, -2)  # (rows, q, k)
        outputs.append(scores.add_(bias[part]).softmax(dim=-1) @ value[part])  # (rows, q, d)
    return torch.cat(outputs).view(B, g, q, d)


def flat_key_sets(parts, n, h):
    """(key, value, visible) parts of shape (n, h|1, nb, k, c), with (n*h) as the kernel's batch.

    Returns the lists of keys and of values, each (n*h, nb, k, d), and the joined visible mask (n*h, nb, 1, K).
    """
    keys, values, masks = zip(*parts)
    keys = [k.expand(n, h, -1, -1, -1).flatten(0, 1) for k in keys]  # (n*h, nb, k, d)
    values = [v.expand(n, h, -1, -1, -1).flatten(0, 1) for v in values]
    masks = [m.squeeze(-1) for m in masks]  # (n, h|1, nb, k)
    mask_heads = max(m.shape[1] for m in masks)
    visible = torch.cat([m.expand(n, mask_heads, -1, -1) for m in masks], dim=3)  # (n, h|1, nb, K)
    visible = visible.expand(n, h, -1, -1).reshape(n * h, -1, 1, visible.shape[-1])  # (n*h, nb, 1, K)
    return keys, values, visible


def batch_key_sets(parts, n, h):
    """The parts joined along the keys: keys and values (n*h, nb, K, d), visible (n*h, nb, 1, K)."""
    keys, values, visible = flat_key_sets(parts, n, h)
    return torch.cat(keys, dim=2), torch.cat(values, dim=2), visible



# ---------------------------------------------------------------------------------------------------------------
# The kernels, their registry and the choice
# ---------------------------------------------------------------------------------------------------------------


def reference_kernel(query, bank_key, bank_value, sees, scale, dropout):
    """Dense softmax attention of every query row over the key bank, the mask written out from `sees`.

    query (n, h, T, d); bank_key, bank_value (n, h, K, d); `sees(b, h, q, k)` broadcasts over index tensors.
    Memory grows as T * K: the readable ground truth, for tests and short inputs.
    """
    n, h, T, _ = query.shape
    K = bank_key.shape[2]
    index = [torch.arange(size, device=query.device) for size in (n, h, T, K)]
    visible = sees(index[0].view(n, 1, 1, 1), index[1].view(1, h, 1, 1), index[2].view(T, 1), index[3].view(1, K))
    return attend(query, bank_key, bank_value, visible, dropout, False, scale)  # (n, h, T, d)


def flex_kernel(query, bank_key, bank_value, sees, scale, dropout):
    """FlexAttention over the key bank with a block mask built from `sees`: only the (query block, key block)
    tiles that LSG makes visible are computed, and no key set is copied.

    On CUDA both steps are compiled: eager `create_block_mask` writes the mask out for every (batch, head, query,
    key), gigabytes at 8,192 tokens, and eager `flex_attention` writes every score out.
    """
    n, h, T, _ = query.shape
    on_cuda = query.is_cuda and not tracing()
    make_block_mask = compiled(create_block_mask) if on_cuda else create_block_mask
    block_mask = make_block_mask(sees, n, h, T, bank_key.shape[2], device=query.device)
    attention = compiled(flex_attention) if on_cuda else flex_attention
    return attention(query, bank_key, bank_value, block_mask=block_mask, scale=scale)


def compiled(function):
    """`torch.compile(function)`, made once per function.

    Shapes become dynamic at the first new length: input lengths change from batch to batch, and one static
    compile per length would reach dynamo's recompile limit (8) and fall back to the eager form, silently.
    """
    if function not in COMPILED:
        COMPILED[function] = torch.compile(function)
    return COMPILED[function]


COMPILED = {}


def eager_kernel(query, local, context, scale, dropout):
    """Scores, an additive mask and a softmax written out over each block's joined key sets."""
    n, h = local[2].shape[0], query.shape[0] // local[2].shape[0]
    key_set, value_set, visible_set = batch_key_sets(context + [local], n, h)  # (n*h, g, K, d)
    return attend(query, key_set, value_set, visible_set, dropout, False, scale)


def sdpa_kernel(query, local, context, scale, dropout):
    """PyTorch's public fused attention over each block's joined key sets (public ops only)."""
    n, h = local[2].shape[0], query.shape[0] // local[2].shape[0]
    key_set, value_set, visible_set = batch_key_sets(context + [local], n, h)  # (n*h, g, K, d)
    return attend(query, key_set, value_set, visible_set, dropout, True, scale)


def cpu_two_part_kernel(query, local, context, scale, dropout):
    """`attend_in_two_parts`: the local window is never copied (CPU, no dropout)."""
    return attend_in_two_parts(query, local, context, scale)


def cpu_bf16_scores_kernel(query, local, context, scale, dropout):
    """`attend_bf16_written_out` over the joined key sets (bfloat16 inference on CPUs with bf16 instructions)."""
    n, h = local[2].shape[0], query.shape[0] // local[2].shape[0]
    key_set, value_set, visible_set = batch_key_sets(context + [local], n, h)  # (n*h, g, K, d)
    return attend_bf16_written_out(query, key_set, value_set, visible_set, scale)


SEQUENCE_KERNELS = {"reference": reference_kernel, "flex": flex_kernel}
BLOCK_KERNELS = {
    "eager": eager_kernel,
    "sdpa": sdpa_kernel,
    "cpu_two_part": cpu_two_part_kernel,
    "cpu_bf16_scores": cpu_bf16_scores_kernel,
}
KERNELS = {**SEQUENCE_KERNELS, **BLOCK_KERNELS}


def kernel_problem(name, query, dropout):
    """Why kernel `name` cannot run on `query` (its device, dtype, autograd, dropout) here, or None."""
    on_cpu = query.device.type == "cpu"
    if name == "flex" and flex_attention is None:
        return "FlexAttention needs PyTorch 2.5 or newer"
    if name == "flex" and query.device.type == "cuda" and not triton_available():
        return "on CUDA FlexAttention runs through torch.compile, which needs Triton (pip install triton)"
    if name == "flex" and dropout > 0:
        return "FlexAttention has no attention dropout"
    if name == "flex" and on_cpu and torch.is_grad_enabled():
        return "FlexAttention has no backward pass on CPU (inference only there)"
    if name == "cpu_two_part" and not (on_cpu and CPU_FLASH_ATTENTION and dropout == 0):
        return "it needs a CPU where PyTorch's flash kernel passed its probe, and no attention dropout"
    if name == "cpu_two_part" and query.dtype not in (torch.float32, torch.bfloat16):
        return "it runs in float32 or bfloat16"
    if name == "cpu_bf16_scores":
        inference = query.dtype == torch.bfloat16 and dropout == 0 and not torch.is_grad_enabled()
        if not (on_cpu and CPU_BF16 and inference):
            return "it is for bfloat16 inference on a CPU with bfloat16 instructions"
    return None


def choose_kernel(requested, query, dropout, eager_attention=False):
    """The kernel for one forward pass: `requested` (a name of `KERNELS`, or "auto") after checking it can run.

    "auto": `eager` when the model was loaded with `attn_implementation="eager"`; on CPU outside tracing,
    `cpu_bf16_scores` for bfloat16 inference where the CPU has bf16 instructions, else `cpu_two_part` where it
    applies, else `sdpa`; everywhere else (CUDA, tracing) `sdpa`, public ops that every test run checks.
    `flex` is chosen only by name: it has not been measured on a GPU yet.
    """
    if requested != "auto":
        problem = kernel_problem(requested, query, dropout)
        if problem:
            raise ValueError(f"LSG-BART: lsg_kernel={requested!r} cannot run here: {problem}; use lsg_kernel='auto'.")
        return requested
    if eager_attention:
        return "eager"
    if not cpu_tuning(query):
        return "sdpa"
    for name in ("cpu_bf16_scores", "cpu_two_part"):
        if kernel_problem(name, query, dropout) is None:
            return name
    return "sdpa"
