"""The attention kernels of LSG-BART, and the choice of one for a forward pass (`choose_kernel`).

A kernel computes the attention of LSG's query blocks over their key sets, which `lsg_attention.py` builds. Two
families share one registry, `KERNELS`:
- sequence kernels see every query row and a key bank (all tokens, then the sparse tokens) with a mask function
  of (batch, head, query, key): `reference` (the dense mask written out, the readable ground truth) and `flex`
  (FlexAttention with a block mask built from the same function: no key-set copies, for GPUs);
- block kernels see groups of blocks with their `KeySets` (the local window as a view, then the global and
  sparse tokens): `eager` (scores written out), `sdpa` (PyTorch's public fused attention over the joined key
  sets), `cpu_two_part` (PyTorch's CPU flash kernel over the local window and the rest, merged by log-sum-exp)
  and `cpu_bf16_scores` (bfloat16 scores written out a few blocks at a time).

`choose_kernel` runs once per encoder forward pass and returns a `Kernel`: the kernel's functions together with
the decisions that depend on the device (the CPU tuning), so that the layers only read them. Private ops are
probed once (`compat.probe`) and used only where the probe passes. Under torch.compile and torch.export (ONNX)
only public ops run.

Shapes: n batch, h heads, B = n*h the kernels' batch, T tokens with the global ones, g blocks in a group, bs block
size, k keys, d head dim.
"""

from typing import Callable, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from .compat import create_block_mask, flex_attention, probe, tracing, triton_available
from .cpu_linear import find_onednn_linear
from .lsg_settings import KERNEL_NAMES, named_table

# On CPU, long inputs are processed in chunks of about this many tokens (the projections, groups of blocks in the
# attention, then the per-token work after it), so that intermediates stay in cache and memory does not grow with
# the length.
TOKEN_CHUNK = 2048

# Written-out attention scores are computed for as many blocks at a time as keep about this many scores (4 MB in
# bfloat16), small enough to stay in cache.
SCORES_IN_CACHE = 2**21

# ---------------------------------------------------------------------------------------------------------------
# Probes of the CPU kernels' private ops
# ---------------------------------------------------------------------------------------------------------------


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


CPU_FLASH_ATTENTION = probe(cpu_flash_attention_works)
CPU_BF16 = probe(cpu_has_bf16_instructions)

# ---------------------------------------------------------------------------------------------------------------
# What a block kernel attends to
# ---------------------------------------------------------------------------------------------------------------


class KeySets(NamedTuple):
    """The keys that a group of g query blocks sees, with the kernels' batch B = n*h first: the local window (the
    block and its two neighbours, views of the keys, never copied) and the other key sets in the spec's order
    (global tokens, the sparse tokens before and after the window). `lsg_attention.key_sets` builds them."""

    local_key: torch.Tensor  # (B, g, 3bs, d)
    local_value: torch.Tensor  # (B, g, 3bs, d)
    local_visible: torch.Tensor  # (B, g, 1, 3bs) bool
    other_keys: Tuple[torch.Tensor, ...]  # each (B, g, k_i, d)
    other_values: Tuple[torch.Tensor, ...]  # each (B, g, k_i, d)
    other_visible: torch.Tensor  # (B, g, 1, K) bool, K = sum of k_i

    def joined(self):
        """Every key set in one: keys and values (B, g, K + 3bs, d), visible (B, g, 1, K + 3bs)."""
        key = torch.cat([*self.other_keys, self.local_key], dim=2)
        value = torch.cat([*self.other_values, self.local_value], dim=2)
        return key, value, torch.cat([self.other_visible, self.local_visible], dim=-1)


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


def attend_in_two_parts(query, key_sets, scale):
    """`TwoPartAttention` of (B, g, bs, d) block queries over the local window and the other key sets."""

    def bias(visible):  # the kernel wants a float mask
        zeros = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
        return zeros.masked_fill(~visible, torch.finfo(query.dtype).min)

    local = (key_sets.local_key, key_sets.local_value, bias(key_sets.local_visible))
    others = (bias(key_sets.other_visible), *key_sets.other_keys, *key_sets.other_values)
    return TwoPartAttention.apply(query, scale, *local, *others)


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


# ---------------------------------------------------------------------------------------------------------------
# The kernels
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


def eager_kernel(query, key_sets, scale, dropout):
    """Scores, an additive mask and a softmax written out over each block's joined key sets."""
    return attend(query, *key_sets.joined(), dropout, False, scale)  # (B, g, bs, d)


def sdpa_kernel(query, key_sets, scale, dropout):
    """PyTorch's public fused attention over each block's joined key sets (public ops only)."""
    return attend(query, *key_sets.joined(), dropout, True, scale)  # (B, g, bs, d)


def cpu_two_part_kernel(query, key_sets, scale, dropout):
    """`attend_in_two_parts`: the local window is never copied (CPU, no dropout)."""
    return attend_in_two_parts(query, key_sets, scale)


def cpu_bf16_scores_kernel(query, key_sets, scale, dropout):
    """`attend_bf16_written_out` over the joined key sets (bfloat16 inference on CPUs with bf16 instructions)."""
    return attend_bf16_written_out(query, *key_sets.joined(), scale)


# ---------------------------------------------------------------------------------------------------------------
# Where each kernel can run
# ---------------------------------------------------------------------------------------------------------------


def runs_anywhere(x, dropout):
    """Why the kernel cannot run on `x` with attention dropout `dropout`: never (the other `*_problem` functions
    answer the same question, with a reason or None)."""
    return None


def flex_problem(x, dropout):
    if flex_attention is None:
        return "FlexAttention needs PyTorch 2.5 or newer"
    if x.device.type == "cuda" and not triton_available():
        return "on CUDA FlexAttention runs through torch.compile, which needs Triton (pip install triton)"
    if dropout > 0:
        return "FlexAttention has no attention dropout"
    if x.device.type == "cpu" and torch.is_grad_enabled():
        return "FlexAttention has no backward pass on CPU (inference only there)"
    return None


def cpu_two_part_problem(x, dropout):
    if not (x.device.type == "cpu" and CPU_FLASH_ATTENTION and dropout == 0):
        return "it needs a CPU where PyTorch's flash kernel passed its probe, and no attention dropout"
    if x.dtype not in (torch.float32, torch.bfloat16):
        return "it runs in float32 or bfloat16"
    return None


def cpu_bf16_scores_problem(x, dropout):
    inference = x.dtype == torch.bfloat16 and dropout == 0 and not torch.is_grad_enabled()
    if not (x.device.type == "cpu" and CPU_BF16 and inference):
        return "it is for bfloat16 inference on a CPU with bfloat16 instructions"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The registry and the choice
# ---------------------------------------------------------------------------------------------------------------


class Kernel(NamedTuple):
    """A kernel and how one encoder forward pass runs it: `choose_kernel` picks it once and every layer reads it.

    A kernel has either `attend_blocks(query blocks (B, g, bs, d), KeySets, scale, dropout)` or
    `attend_sequence(query (n, h, T, d), bank key, bank value (n, h, K, d), sees, scale, dropout)`.
    """

    name: str
    attend_blocks: Optional[Callable] = None
    attend_sequence: Optional[Callable] = None
    # Full attention (short inputs, the global rows) with its scores written out, not through SDPA.
    written_out: bool = False
    # Whether it joins the key sets (several times the size of the keys) before attending.
    joins_key_sets: bool = False
    problem: Callable = runs_anywhere  # (x, dropout) -> why it cannot run on `x` here, or None
    # Decided once per forward pass by `choose_kernel`:
    cpu_tuned: bool = False  # on CPU, not tracing: token chunks, and less kept for the backward pass
    recompute_key_sets: bool = False  # CPU training: key sets are joined again in the backward pass, not kept
    traced: bool = False  # under torch.compile or torch.export: public ops only

    @property
    def token_chunk(self):
        """How many tokens the projections, the block groups and the per-token work take at a time, or None (all)."""
        return TOKEN_CHUNK if self.cpu_tuned else None

    def attend(self, query, key, value, visible, scale, dropout):
        """Full attention of (..., q, d) queries over (..., k, d) keys, visible (..., 1|q, k) bool."""
        return attend(query, key, value, visible, dropout, not self.written_out, scale)


KERNELS = named_table(
    KERNEL_NAMES,
    {
        kernel.name: kernel
        for kernel in (
            Kernel("reference", attend_sequence=reference_kernel, written_out=True),
            Kernel("flex", attend_sequence=flex_kernel, problem=flex_problem),
            Kernel("eager", attend_blocks=eager_kernel, written_out=True, joins_key_sets=True),
            Kernel("sdpa", attend_blocks=sdpa_kernel, joins_key_sets=True),
            Kernel("cpu_two_part", attend_blocks=cpu_two_part_kernel, problem=cpu_two_part_problem),
            Kernel(
                "cpu_bf16_scores",
                attend_blocks=cpu_bf16_scores_kernel,
                joins_key_sets=True,
                problem=cpu_bf16_scores_problem,
            ),
        )
    },
)


def kernel_problem(name, x, dropout):
    """Why kernel `name` cannot run on `x` (its device, dtype, autograd, dropout) here, or None."""
    return KERNELS[name].problem(x, dropout)


def choose_kernel(requested, x, dropout, eager_attention=False):
    """The `Kernel` for one encoder forward pass on hidden states `x`: `requested` (a name of `KERNELS`, or
    "auto") after checking it can run, with the CPU tuning decided for `x`.

    "auto": `eager` when the model was loaded with `attn_implementation="eager"`; on CPU outside tracing,
    `cpu_bf16_scores` for bfloat16 inference where the CPU has bf16 instructions, else `cpu_two_part` where it
    applies, else `sdpa`; everywhere else (CUDA, tracing) `sdpa`, public ops that every test run checks.
    `flex` is chosen only by name: it has not been measured on a GPU yet.
    """
    traced = tracing()
    cpu = x.device.type == "cpu" and not traced
    if requested != "auto":
        problem = kernel_problem(requested, x, dropout)
        if problem:
            raise ValueError(f"LSG-BART: lsg_kernel={requested!r} cannot run here: {problem}; use lsg_kernel='auto'.")
        kernel = KERNELS[requested]
    elif eager_attention:
        kernel = KERNELS["eager"]
    else:
        candidates = ("cpu_bf16_scores", "cpu_two_part") if cpu else ()
        usable = [name for name in candidates if kernel_problem(name, x, dropout) is None]
        kernel = KERNELS[usable[0] if usable else "sdpa"]
    return kernel._replace(
        cpu_tuned=cpu,
        recompute_key_sets=cpu and kernel.joins_key_sets and torch.is_grad_enabled(),
        traced=traced,
    )
