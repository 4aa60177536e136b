"""PyTorch LSG-BART: BART whose encoder self-attention is Local + Sparse + Global (LSG) attention.

Reading order follows the design: the linear layers (float32 on CPU through oneDNN), how blocks and their
neighbours are built, how sparse tokens are picked, how a set of keys is attended, then the attention layer, the
encoder and the models.

Shapes: n batch, h heads, T tokens with the global ones, t tokens without them (a multiple of the block size),
d head dim, G global tokens, bs block size, nb = t / bs blocks, f sparsity factor, sbs sparse block size.
Masks are boolean, True for a visible key, and carry a trailing singleton so that one function handles
keys (..., d) and masks (..., 1) alike.
"""

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationConfig, Pipeline, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.bart.modeling_bart import (
    BartDecoder,
    BartAttention,
    BartClassificationHead,
    BartEncoder,
    BartEncoderLayer,
    BartForCausalLM,
    BartForConditionalGeneration,
    BartForQuestionAnswering,
    BartForSequenceClassification,
    BartLearnedPositionalEmbedding,
    BartModel,
    BartPreTrainedModel,
    BartScaledWordEmbedding,
)

from .configuration_lsg_bart import MAX_GLOBAL_TOKENS, LSGBartConfig
from .transformers_compat import (
    accepted_kwargs,
    attention_result,
    call_layer,
    can_return_tuple,
    output_requested,
    pipeline_generate_kwargs,
    pipeline_tokenizer,
    read_shared_embeddings_as_decoder_embeddings,
    return_dict_requested,
)

# Long inputs are processed in chunks of about this many tokens (groups of blocks in the attention, then the
# per-token work after it), so that intermediates stay in cache and memory does not grow with the length.
TOKEN_CHUNK = 2048

# Written-out attention scores are computed for as many blocks at a time as keep about this many scores (4 MB in
# bfloat16), small enough to stay in cache.
SCORES_IN_CACHE = 2**21

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
    except (AttributeError, RuntimeError, NotImplementedError):
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


# ---------------------------------------------------------------------------------------------------------------
# Linear layers
# ---------------------------------------------------------------------------------------------------------------


def onednn_linear(x, weight, bias=None, activation="none"):
    """`activation(x @ weight.T + bias)` in one oneDNN call; `activation` is "none" or "gelu" (the exact, erf one)."""
    return ONEDNN_LINEAR(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


def uses_onednn(x, weight):
    """Whether `linear` sends `x @ weight.T` to oneDNN: plain float32 tensors on CPU (not tensor subclasses such as
    quantised weights, which dispatch `F.linear` themselves), oneDNN enabled, no autocast (it picks its own dtype)."""
    return (
        ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and type(x) is torch.Tensor
        and type(weight) in (torch.Tensor, nn.Parameter)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
    )


class OneDNNLinear(torch.autograd.Function):
    """`F.linear` in float32 through oneDNN, forward and backward.

    PyTorch sends float32 matrix products to MKL, which on some CPUs (AMD's among them) runs without AVX-512 and
    reaches half the rate oneDNN reaches on the same cores. The arithmetic is float32 either way.
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


class LSGLinear(nn.Linear):
    """`nn.Linear` whose products go through `linear` (oneDNN for float32 on CPU). Same parameters and state dict;
    the LSG-BART models turn their plain `nn.Linear` layers (BART's decoder, the heads) into these."""

    def forward(self, x):
        return linear(x, self.weight, self.bias)


def is_plain_linear(layer):
    """True for an `nn.Linear` (or `LSGLinear`) without hooks: its weights can be used directly. Wrapped layers
    (LoRA, quantised layers, hooks) are called as they are."""
    return type(layer) in (nn.Linear, LSGLinear) and not (layer._forward_hooks or layer._forward_pre_hooks)


def project(layer, x):
    """`layer(x)`, through `linear` when the layer is a plain `nn.Linear`."""
    return linear(x, layer.weight, layer.bias) if is_plain_linear(layer) else layer(x)


def dropout(x, p, training):
    """`F.dropout`. On CPU, `F.dropout` keeps its float noise for the backward pass; this keeps a boolean mask."""
    if training and 0 < p < 1 and x.device.type == "cpu":
        return torch.native_dropout(x, p, True)[0]
    return F.dropout(x, p=p, training=training)


# ---------------------------------------------------------------------------------------------------------------
# Blocks and windows
# ---------------------------------------------------------------------------------------------------------------


class OverlappingWindows(torch.autograd.Function):
    """Windows of `size` positions every `step` positions along dim 2, as a view: (n, h, L, c) -> (n, h, w, size, c).

    The view is `x.unfold(2, size, step)`. Its backward pass adds each window's gradient back in `size / step`
    slices where `step` divides `size`; PyTorch's own `unfold` backward indexes every element and is ~10x slower.
    """

    @staticmethod
    def forward(ctx, x, size, step):
        ctx.shape, ctx.size, ctx.step = x.shape, size, step
        return x.unfold(2, size, step).transpose(-1, -2)  # (n, h, w, size, c)

    @staticmethod
    def backward(ctx, grad_windows):
        size, step = ctx.size, ctx.step
        if size % step and UNFOLD_BACKWARD:
            grad = torch.ops.aten.unfold_backward(grad_windows.transpose(-1, -2), ctx.shape, 2, size, step)
            return grad, None, None
        n, h, w, _, c = grad_windows.shape
        grad = grad_windows.new_zeros(ctx.shape)  # (n, h, L, c)
        if size % step:  # window by window
            for window in range(w):
                grad[:, :, window * step : window * step + size] += grad_windows[:, :, window]
            return grad, None, None
        steps = grad[:, :, : (w - 1) * step + size].unflatten(2, (-1, step))  # (n, h, w - 1 + size/step, step, c)
        for part in range(size // step):
            steps[:, :, part : part + w] += grad_windows[:, :, :, part * step : (part + 1) * step]
        return grad, None, None


def local_windows(x, block_size):
    """Each block with its left and right neighbour, as overlapping views.

    x: (n, h, bs + t + bs, c), the t tokens with one block of margin on each side (the mask hides the margins,
    so their content is never seen) -> (n, h, nb, 3*bs, c).
    """
    return OverlappingWindows.apply(x, 3 * block_size, block_size)


def project_into_heads(project, x, heads, before, after):
    """Queries (n, h, T, d), and keys and values (n, h, before + T + after, d) with zeros in the margins.

    `project` maps (n, c, h*d) hidden states to their queries, keys and values, each (n, c, h*d). It is applied
    `TOKEN_CHUNK` tokens at a time: the joint projection of a whole long input would be a tensor of over 32 MB,
    which glibc maps afresh on every allocation, and touching its new pages costs a fifth of the product.
    """
    n, T, _ = x.shape
    d = x.shape[-1] // heads
    query = x.new_empty(n, heads, T, d)
    key, value = (x.new_empty(n, heads, before + T + after, d) for _ in range(2))
    for buffer in (key, value):
        buffer[:, :, :before] = 0
        buffer[:, :, before + T :] = 0
    for start in range(0, T, TOKEN_CHUNK):
        parts = project(x[:, start : start + TOKEN_CHUNK])  # 3 x (n, c, h*d)
        c = parts[0].shape[1]
        for buffer, offset, part in zip((query, key, value), (start, before + start, before + start), parts):
            buffer[:, :, offset : offset + c] = part.view(n, c, heads, d).transpose(1, 2)
    return query, key, value


def pad_for_sparse_windows(x, tokens_per_block, sparse_block_size):
    """(n, h, t/f, c) compressed tokens -> (n, h, t/f + 2*(sbs + tpb), c), zeros/False on both sides."""
    margin = sparse_block_size + tokens_per_block
    return F.pad(x, (0, 0, margin, margin))


def sparse_windows(padded, tokens_per_block, sparse_block_size, first, blocks):
    """The compressed tokens just before and just after the local windows of blocks [first, first + blocks).

    `padded` comes from `pad_for_sparse_windows`: the t/f compressed tokens, `tokens_per_block` (= bs/f) of them
    per block. Block i's local window covers compressed positions [(i-1)*tpb, (i+2)*tpb); it sees `sbs` tokens
    before it and `sbs` after it. Returns the two parts as views, each (n, h, blocks, sbs, c); positions
    outside the sequence are 0/False.
    """
    tpb, sbs = tokens_per_block, sparse_block_size
    # The original code starts the "after" part 2 positions early when tpb is odd; checkpoints expect it.
    after_shift = 2 if tpb % 2 == 1 else 0
    span = (blocks - 1) * tpb + sbs  # the padded positions the group's windows cover
    # In padded coordinates block i's "before" part starts at i*tpb and its "after" part at i*tpb + sbs + 3*tpb.
    parts = []
    for offset in (0, sbs + 3 * tpb - after_shift):
        begin = first * tpb + offset
        parts.append(OverlappingWindows.apply(padded[:, :, begin : begin + span], sbs, tpb))  # (n, h, blocks, sbs, c)
    return parts


# ---------------------------------------------------------------------------------------------------------------
# Sparse selectors: (n, h, t, d) keys and values with their (n, 1|h, t, 1) mask -> t/f compressed tokens
# ---------------------------------------------------------------------------------------------------------------


def gather_tokens(keys, values, mask, index):
    """Pick tokens per head: index (n|1, h, t', 1) -> keys, values (n, h, t', d), mask (n, h, t', 1)."""
    n, h, t, d = keys.shape
    index = index.expand(n, h, -1, 1)
    # Rows of a flat (n*h*t, d) table: copying whole rows is much faster than `gather` along dim 2.
    rows = (index + torch.arange(0, n * h * t, t, device=keys.device).view(n, h, 1, 1)).flatten()
    k = keys.reshape(n * h * t, d).index_select(0, rows).view(n, h, -1, d)
    v = values.reshape(n * h * t, d).index_select(0, rows).view(n, h, -1, d)
    return k, v, mask.expand(n, h, t, 1).gather(2, index)


def select_by_norm(keys, values, mask, chunk_size, factor):
    """In each chunk and head, the chunk/f keys of largest L2 norm, in ascending order of norm (no gradient)."""
    n, h, t, _ = keys.shape
    with torch.no_grad():
        norms = keys.norm(dim=-1, keepdim=True).masked_fill(~mask, 0)  # (n, h, t, 1)
        norms = norms.view(n, h, t // chunk_size, chunk_size)
        picks = norms.topk(chunk_size // factor, dim=-1).indices.flip(-1)  # (n, h, t/c, c/f)
        picks = picks + torch.arange(0, t, chunk_size, device=keys.device).view(1, 1, -1, 1)
    return gather_tokens(keys, values, mask, picks.reshape(n, h, t // factor, 1))


def select_by_pooling(keys, values, mask, factor):
    """Average of the visible tokens in each group of f; a group with none is masked."""
    n, h, t, d = keys.shape
    weight = mask.to(keys.dtype)  # (n, 1|h, t, 1)
    count = weight.view(n, -1, t // factor, factor, 1).sum(3)  # (n, 1|h, t/f, 1)

    def pool(x):
        return (x * weight).view(n, h, t // factor, factor, d).sum(3) / (count + 1e-6)

    return pool(keys), pool(values), count > 0


def select_by_stride(keys, values, mask, factor):
    """Head j keeps tokens j mod f, j mod f + f, j mod f + 2f, ..."""
    _, h, t, _ = keys.shape
    offset = torch.arange(h, device=keys.device) % factor
    index = torch.arange(0, t, factor, device=keys.device).view(1, 1, -1, 1) + offset.view(1, h, 1, 1)
    return gather_tokens(keys, values, mask, index)  # index (1, h, t/f, 1)


def select_by_block_stride(keys, values, mask, factor, block_size):
    """In each block, head j keeps the bs/f consecutive tokens starting at (j * bs/f) mod bs."""
    _, h, t, _ = keys.shape
    tokens_per_block = block_size // factor
    start = (torch.arange(h, device=keys.device) * tokens_per_block) % block_size  # (h,)
    in_block = start.view(h, 1) + torch.arange(tokens_per_block, device=keys.device)  # (h, bs/f)
    blocks = torch.arange(0, t, block_size, device=keys.device).view(1, -1, 1)  # (1, nb, 1)
    index = (blocks + in_block.view(h, 1, -1)).view(1, h, t // factor, 1)
    return gather_tokens(keys, values, mask, index)


def lsh_merge(keys, values, counts, num_buckets, generator):
    """One LSH round: hash each token of each chunk into `num_buckets` buckets and sum per bucket.

    keys, values (n, h, chunks, L, d), counts (n, h, chunks, L, 1) -> the same with L = num_buckets.
    """
    n, h, _, _, d = keys.shape
    num_planes = (num_buckets + 1) // 2
    planes = torch.randn(h, d, num_planes, generator=generator, device=keys.device).to(keys.dtype)
    projected = F.normalize(keys, dim=-1) @ planes.view(1, h, 1, d, num_planes)  # (n, h, chunks, L, planes)
    bucket = torch.cat([projected, -projected], dim=-1)[..., :num_buckets].argmax(-1)  # (n, h, chunks, L)
    assign = F.one_hot(bucket, num_buckets).to(keys.dtype).transpose(-1, -2)  # (n, h, chunks, buckets, L)
    return assign @ keys, assign @ values, assign @ counts


def select_by_lsh(keys, values, mask, chunk_size, factor, pre_rounds, generator):
    """Merge the tokens of each chunk by LSH buckets: `pre_rounds` rounds into c buckets, then c/f buckets."""
    n, h, t, d = keys.shape
    weight = mask.to(keys.dtype).expand(n, h, t, 1)
    chunked = (n, h, t // chunk_size, chunk_size, -1)
    k, v, counts = (keys * weight).view(chunked), (values * weight).view(chunked), weight.reshape(chunked)
    for num_buckets in [chunk_size] * pre_rounds + [chunk_size // factor]:
        k, v, counts = lsh_merge(k, v, counts, num_buckets, generator)  # (n, h, t/c, buckets, d)
    k, v, counts = (x.reshape(n, h, t // factor, -1) for x in (k, v, counts))
    # Counts are whole numbers: dividing by max(count, 1) equals the original's count + 1e-8 in float32, and
    # unlike it stays finite in float16, where 1e-8 rounds to 0.
    return k / counts.clamp_min(1), v / counts.clamp_min(1), counts > 0


def select_by_bos_pooling(keys, values, mask, first_query, factor):
    """Pool each group of f tokens with softmax weights of the first real token's query against its keys.

    Every pooled token is visible, even a group made only of padding (as in the original).
    first_query: (n, h, 1, d), already scaled.
    """
    n, h, t, d = keys.shape
    scores = (keys @ first_query.transpose(-1, -2)).masked_fill(~mask, torch.finfo(keys.dtype).min)  # (n, h, t, 1)
    weight = scores.view(n, h, t // factor, factor, 1).softmax(dim=3)  # (n, h, t/f, f, 1)

    def pool(x):
        return (x.view(n, h, t // factor, factor, d) * weight).sum(3)

    return pool(keys), pool(values), mask.new_ones(n, 1, t // factor, 1)


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
    about half the time of PyTorch's fused kernel, which is no faster in bfloat16 than in float32 (its softmax
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


def can_attend_bf16_written_out(query, dropout):
    """Whether `attend_bf16_written_out` applies: bfloat16 inference on a CPU with bfloat16 instructions."""
    on_cpu = query.device.type == "cpu" and CPU_BF16
    return on_cpu and query.dtype == torch.bfloat16 and dropout == 0.0 and not torch.is_grad_enabled()


def can_attend_in_two_parts(query, dropout):
    """Whether `attend_in_two_parts` applies: on CPU where the fused kernel passed its probe, without dropout, in
    a dtype the kernel masks safely."""
    on_cpu = query.device.type == "cpu" and CPU_FLASH_ATTENTION
    return on_cpu and dropout == 0.0 and query.dtype in (torch.float32, torch.bfloat16)


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


class LSGSelfAttention(BartAttention):
    """BART self-attention of the encoder computed with LSG attention (same projections and weights).

    Expects `attention_mask` as a (n, T) boolean tensor of visible keys, global tokens included. Runs the
    straightforward path when `config._attn_implementation == "eager"`, and the fast path otherwise: PyTorch's
    SDPA kernel over blocks (on CPU in two parts, local window and the rest), or for bfloat16 inference on CPU
    the scores written out a few blocks at a time.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: int | None = None):
        super().__init__(
            embed_dim=config.d_model,
            num_heads=config.encoder_attention_heads,
            dropout=config.attention_dropout,
            config=config,
            **accepted_kwargs(BartAttention.__init__, layer_idx=layer_idx),
        )
        self.layer_idx = layer_idx

    # The LSG settings are read from the config on every call, so that a change made after loading (checked by
    # the config when it is set) takes effect.
    block_size = property(lambda self: self.config.block_size)
    sparse_block_size = property(lambda self: self.config.sparse_block_size)
    sparsity_factor = property(lambda self: self.config.sparsity_factor)
    sparsity_type = property(lambda self: self.config.sparsity_type)
    num_global_tokens = property(lambda self: self.config.num_global_tokens)
    lsh_num_pre_rounds = property(lambda self: self.config.lsh_num_pre_rounds)
    lsh_seed = property(lambda self: self.config.lsh_seed)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        n, T, _ = hidden_states.shape
        h, d = self.num_heads, self.head_dim
        G, bs = self.num_global_tokens, self.block_size
        if attention_mask is None:
            attention_mask = hidden_states.new_ones(n, T, dtype=torch.bool)
        visible = attention_mask.view(n, 1, T, 1)  # (n, 1, T, 1)
        use_sdpa = self.config._attn_implementation != "eager"
        dropout = self.dropout if self.training else 0.0

        project_qkv = self.qkv_projection()
        if T <= 2 * bs + G:
            query, key, value = (x.view(n, T, h, d).transpose(1, 2) for x in project_qkv(hidden_states))  # (n, h, T, d)
            out = attend(query, key, value, visible.transpose(-1, -2), dropout, use_sdpa, self.scaling).transpose(1, 2)
        else:
            # Keys and values get a block of margin around the non-global tokens, so that every local window
            # is a view of them; the query is contiguous, so that its blocks are views too.
            margin = max(bs - G, 0)
            query, key, value = project_into_heads(project_qkv, hidden_states, h, margin, bs)
            out = self.lsg_attention(query, key, value, visible, margin, dropout, use_sdpa)  # (n, T, h, d)

        return project(self.out_proj, out.reshape(n, T, h * d)), None

    def qkv_projection(self):
        """A function from hidden states (n, c, h*d) to their queries, keys and values, each (n, c, h*d): one
        matrix product with the three layers' weights joined (once per call of this method) when they are plain."""
        layers = (self.q_proj, self.k_proj, self.v_proj)
        if not all(is_plain_linear(layer) for layer in layers):
            return lambda x: tuple(layer(x) for layer in layers)
        weight = torch.cat([layer.weight for layer in layers])  # (3*h*d, h*d)
        bias = torch.cat([layer.bias for layer in layers]) if all(layer.bias is not None for layer in layers) else None
        return lambda x: linear(x, weight, bias).split(self.embed_dim, dim=-1)

    def lsg_attention(self, query, key, value, visible, margin, dropout, use_sdpa):
        """Global rows attend to everything; each block of the rest to global + sparse window + local window.

        query (n, h, T, d); key and value (n, h, margin + T + bs, d), the T tokens starting at `margin`.
        Returns (n, T, h, d).
        """
        G, T = self.num_global_tokens, query.shape[2]
        all_keys, all_values = key[:, :, margin : margin + T], value[:, :, margin : margin + T]  # (n, h, T, d)
        global_out = attend(
            query[:, :, :G], all_keys, all_values, visible.transpose(-1, -2), dropout, use_sdpa, self.scaling
        )
        if use_sdpa and torch.is_grad_enabled() and not can_attend_in_two_parts(query, dropout):
            # Training with the joined key sets, ~5x the size of the keys: rebuilding them in the backward pass
            # instead of keeping them saves most of the attention's memory for a small share of its time.
            block_out = checkpoint(
                self.block_attention, query, key, value, visible, margin, dropout, use_sdpa, use_reentrant=False
            )
        else:
            block_out = self.block_attention(query, key, value, visible, margin, dropout, use_sdpa)
        return torch.cat([x.transpose(1, 2) for x in (global_out, *block_out)], dim=1)  # (n, T, h, d)

    def block_attention(self, query, key, value, visible, margin, dropout, use_sdpa):
        """The rows after the global tokens, block by block: a tuple of (n, h, rows, d) outputs, in order.

        Arguments as for `lsg_attention`.
        """
        n, h, T, d = query.shape
        G, bs = self.num_global_tokens, self.block_size
        nb = (T - G) // bs
        start = margin + G  # where the non-global tokens begin in `key` and `value`

        rest = (key[:, :, start : start + T - G], value[:, :, start : start + T - G], visible[:, :, G:])  # (n, h|1, t, d|1)
        global_kv = (key[:, :, margin:start], value[:, :, margin:start], visible[:, :, :G])  # (n, h|1, G, d|1)
        tpb, sbs = bs // self.sparsity_factor, self.sparse_block_size
        padded_sparse = []
        if sbs > 0 and self.sparsity_type != "none":
            sparse = self.select_sparse_tokens(*rest, query[:, :, G : G + 1] * self.scaling)
            padded_sparse = [pad_for_sparse_windows(x, tpb, sbs) for x in sparse]  # (n, h|1, t/f + margins, d|1)
        with_margins = (key[:, :, start - bs :], value[:, :, start - bs :], F.pad(rest[2], (0, 0, bs, bs)))

        block_query = query[:, :, G:].reshape(n * h, nb, bs, d)  # (n*h, nb, bs, d), a view
        two_parts = use_sdpa and can_attend_in_two_parts(block_query, dropout)
        written_out = use_sdpa and can_attend_bf16_written_out(block_query, dropout)
        # Groups of blocks are attended one after the other, so that their joined key sets stay small. Each
        # group's windows are views cut from its own stretch of tokens: in the backward pass they fill gradients
        # of that stretch, not zero-filled gradients the size of every window.
        group_size = max(1, TOKEN_CHUNK // bs)
        outputs = []
        for first in range(0, nb, group_size):
            blocks = min(group_size, nb - first)
            # Key sets as (key, value, visible) triples of shape (n, h|1, blocks, k, d|1), in the spec's order:
            # global tokens, the sparse window before and after the block, then the local window.
            group_context = [tuple(x.unsqueeze(2).expand(-1, -1, blocks, -1, -1) for x in global_kv)]
            if padded_sparse:
                windows = [sparse_windows(x, tpb, sbs, first, blocks) for x in padded_sparse]
                group_context += list(zip(*windows))
            stretch = slice(first * bs, (first + blocks + 2) * bs)  # the group's blocks and one on each side
            group_local = tuple(local_windows(x[:, :, stretch], bs) for x in with_margins)  # (n, h|1, blocks, 3*bs, d|1)
            group_query = block_query[:, first : first + blocks]
            if two_parts and not written_out:
                out = attend_in_two_parts(group_query, group_local, group_context, self.scaling)
            else:
                key_set, value_set, visible_set = batch_key_sets(group_context + [group_local], n, h)  # (n*h, g, K, d)
                if written_out:
                    out = attend_bf16_written_out(group_query, key_set, value_set, visible_set, self.scaling)
                else:
                    out = attend(group_query, key_set, value_set, visible_set, dropout, use_sdpa, self.scaling)
            outputs.append(out.view(n, h, -1, d))  # (n, h, g*bs, d)
        return tuple(outputs)

    def select_sparse_tokens(self, keys, values, visible, first_query):
        """Compress (n, h, t, d) keys and values and their mask to t/f sparse tokens with the configured selector.

        `first_query` (n, h, 1, d), scaled, is the first non-global token's query (for `bos_pooling`).
        """
        f, chunk_size = self.sparsity_factor, min(self.block_size, self.sparse_block_size)
        if f == 1:
            return keys, values, visible
        if self.sparsity_type == "norm":
            return select_by_norm(keys, values, visible, chunk_size, f)
        if self.sparsity_type == "pooling":
            return select_by_pooling(keys, values, visible, f)
        if self.sparsity_type == "stride":
            return select_by_stride(keys, values, visible, f)
        if self.sparsity_type == "block_stride":
            return select_by_block_stride(keys, values, visible, f, self.block_size)
        if self.sparsity_type == "lsh" and f != self.sparse_block_size:
            generator = None
            if self.lsh_seed is not None:
                generator = torch.Generator(device=keys.device).manual_seed(self.lsh_seed + (self.layer_idx or 0))
            return select_by_lsh(keys, values, visible, chunk_size, f, self.lsh_num_pre_rounds, generator)
        return select_by_bos_pooling(keys, values, visible, first_query, f)


# ---------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------


class LSGBartEncoderLayer(BartEncoderLayer):
    """A BART encoder layer whose self-attention is [`LSGSelfAttention`].

    Same computation as BART's layer. What follows the attention works token by token, so it runs on chunks of
    `TOKEN_CHUNK` tokens: the feed-forward block's 4x-wide intermediate then stays in cache, and its memory does
    not grow with the input length.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: int | None = None):
        super().__init__(config, **accepted_kwargs(BartEncoderLayer.__init__, layer_idx=layer_idx))
        self.self_attn = LSGSelfAttention(config, layer_idx)
        self.exact_gelu = config.activation_function == "gelu"

    def forward(self, hidden_states, attention_mask, **kwargs):
        attended, _ = self.self_attn(hidden_states, attention_mask=attention_mask, **kwargs)  # (n, T, d_model)
        chunks = zip(hidden_states.split(TOKEN_CHUNK, dim=1), attended.split(TOKEN_CHUNK, dim=1))
        hidden_states = torch.cat([self.after_attention(*chunk) for chunk in chunks], dim=1)  # (n, T, d_model)
        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states

    def after_attention(self, hidden_states, attended):
        """Residual and layer norm, then BART's feed-forward block: (n, chunk, d_model) -> (n, chunk, d_model)."""
        attended = dropout(attended, self.dropout, self.training)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        if torch.is_grad_enabled():
            fed_forward = self.feed_forward_for_training(hidden_states)
        else:
            fed_forward = self.project_down(self.fc1_activated(hidden_states))
        fed_forward = dropout(fed_forward, self.dropout, self.training)
        return self.final_layer_norm(hidden_states + fed_forward)

    def plain_gelu_block(self):
        """Whether the feed-forward block is plain linear layers with biases around the exact GELU."""
        layers = (self.fc1, self.fc2)
        return self.exact_gelu and all(is_plain_linear(layer) and layer.bias is not None for layer in layers)

    def feed_forward_for_training(self, hidden_states):
        """The feed-forward block with autograd, keeping less than fc1's 4x-wide output for the backward pass."""
        autocast = torch.is_autocast_enabled(hidden_states.device.type)  # its backward would get mixed dtypes
        if self.plain_gelu_block() and (self.activation_dropout == 0 or not self.training) and not autocast:
            fc1, fc2 = self.fc1, self.fc2
            return RecomputedFeedForward.apply(hidden_states, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        # Otherwise the activation's output, the largest tensor, is recomputed instead of kept.
        fed_forward = project(self.fc1, hidden_states)  # (n, chunk, ffn_dim)
        return checkpoint(self.activate_and_project, fed_forward, use_reentrant=False)

    def fc1_activated(self, hidden_states):
        """The activation of `fc1`'s output, (n, chunk, ffn_dim); one oneDNN call for float32 GELU on CPU."""
        if self.plain_gelu_block():
            return linear_gelu(hidden_states, self.fc1.weight, self.fc1.bias)
        return self.activation_fn(project(self.fc1, hidden_states))

    def activate_and_project(self, fed_forward):
        """Activation, activation dropout and `fc2`: (n, chunk, ffn_dim) -> (n, chunk, d_model)."""
        return self.project_down(self.activation_fn(fed_forward))

    def project_down(self, activated):
        """Activation dropout and `fc2`: (n, chunk, ffn_dim) -> (n, chunk, d_model)."""
        activated = dropout(activated, self.activation_dropout, self.training)
        return project(self.fc2, activated)


class LSGBartPreTrainedModel(BartPreTrainedModel):
    """Base class of the LSG-BART models: weight initialisation, loading of LSG checkpoints, `LSGLinear` layers."""

    config_class = LSGBartConfig
    base_model_prefix = "model"
    _no_split_modules = [r"LSGBartEncoderLayer", r"BartDecoderLayer"]
    _supports_flash_attn = False
    _supports_flash_attn_2 = False  # the name before transformers 4.52
    _supports_flex_attn = False
    _supports_sdpa = True
    _can_compile_fullgraph = False
    # The heads average their loss over their own batch: Trainer must not rescale it (DDP, accumulation).
    accepts_loss_kwargs = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """[`PreTrainedModel.from_pretrained`]; an unreadable weights file (truncated, corrupt) is reported with its
        path."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            folder = str(pretrained_model_name_or_path)
            files = sorted(str(path) for path in Path(folder).glob("*.safetensors")) if Path(folder).is_dir() else []
            where = ", ".join(files) or folder
            raise OSError(f"{cls.__name__}: cannot read the weights in {where}: {error}") from error

    def post_init(self):
        super().post_init()
        # Changing the class keeps each layer's parameters, hooks and tied weights as they are.
        for module in self.modules():
            if type(module) is nn.Linear:
                module.__class__ = LSGLinear


def check_encoder_inputs(input_ids, attention_mask, inputs_embeds, vocab_size):
    """`ValueError` for encoder inputs that would otherwise fail deep inside or silently give wrong results: not
    exactly one of `input_ids` and `inputs_embeds`, an `attention_mask` of another shape, an empty input, token ids
    outside the vocabulary."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("LSG-BART encoder: give exactly one of `input_ids` and `inputs_embeds`.")
    given, name = (input_ids, "input_ids") if input_ids is not None else (inputs_embeds, "inputs_embeds")
    if given.dim() != (2 if input_ids is not None else 3):
        expected = "(batch_size, sequence_length)" + (", d_model)" if input_ids is None else "")
        raise ValueError(f"LSG-BART encoder: `{name}` has shape {tuple(given.shape)}; expected {expected}.")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(given.shape[:2]):
        raise ValueError(
            f"LSG-BART encoder: `attention_mask` has shape {tuple(attention_mask.shape)} but `{name}` has shape "
            f"{tuple(given.shape)}; the mask must be (batch_size, sequence_length) = {tuple(given.shape[:2])}."
        )
    if given.shape[1] == 0:
        raise ValueError(f"LSG-BART encoder: `{name}` is empty (shape {tuple(given.shape)}); give at least one token.")
    if input_ids is not None and input_ids.numel():
        low, high = torch.aminmax(input_ids)
        if low < 0 or high >= vocab_size:
            bad = high.item() if high >= vocab_size else low.item()
            raise ValueError(
                f"LSG-BART encoder: `input_ids` holds token id {bad}, outside the vocabulary (0 to {vocab_size - 1}); "
                "was the input made with another tokenizer?"
            )


class LSGBartEncoder(LSGBartPreTrainedModel, BartEncoder):
    """BART encoder with LSG self-attention and `num_global_tokens` learned global tokens.

    Inputs longer than `2 * block_size` are padded to a multiple of `block_size` (`adaptive=True`); the output
    is cropped back, with the global tokens first when `pass_global_tokens_to_decoder` is set.
    """

    def __init__(self, config: LSGBartConfig):
        PreTrainedModel.__init__(self, config)  # BART's own sub-modules are not built
        self.dropout = config.dropout
        self.layerdrop = config.encoder_layerdrop
        self.padding_idx = config.pad_token_id
        self.max_source_positions = config.max_position_embeddings
        embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.embed_tokens = BartScaledWordEmbedding(config.vocab_size, config.d_model, self.padding_idx, embed_scale)
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings, config.d_model)
        self.global_embeddings = nn.Embedding(MAX_GLOBAL_TOKENS, config.d_model)
        self.layers = nn.ModuleList([LSGBartEncoderLayer(config, i) for i in range(config.encoder_layers)])
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.gradient_checkpointing = False
        self.post_init()

    def padding_length(self, length):
        """How many tokens adaptive padding adds to a sequence of `length` tokens."""
        bs = self.config.block_size
        if length <= 2 * bs or length % bs == 0:
            return 0
        if not self.config.adaptive:
            raise ValueError(
                f"Input length {length} is not a multiple of block_size={bs}; pad it to a multiple of {bs} "
                "or use a config with adaptive=True."
            )
        return bs - length % bs

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs) -> BaseModelOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Token ids; give these or `inputs_embeds`.
        attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
            1 for tokens to attend to, 0 for padding. Not modified.
        inputs_embeds (`torch.FloatTensor` of shape `(batch_size, sequence_length, d_model)`, *optional*):
            Token embeddings to use instead of `input_ids`.
        output_hidden_states (`bool`, *optional*):
            Also return the input of each layer and the final output: `num_global_tokens` + the padded length
            positions each, except the last, which is cropped like `last_hidden_state`.
        output_attentions (`bool`, *optional*):
            Accepted for compatibility; LSG attention has no attention matrix, so `attentions` is `None`.
        return_dict (`bool`, *optional*):
            Return a [`BaseModelOutput`] (the default) or a tuple.
        """
        config = self.config
        check_encoder_inputs(input_ids, attention_mask, inputs_embeds, config.vocab_size)
        n, t = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = self.embed_positions.weight.device

        visible = torch.ones(n, t, dtype=torch.bool, device=device)
        if attention_mask is not None:
            visible = attention_mask.to(device=device, dtype=torch.bool)  # a new tensor: the caller's is untouched
        if config.mask_first_token:
            visible = torch.cat([torch.zeros_like(visible[:, :1]), visible[:, 1:]], dim=1)

        pad = self.padding_length(t)
        padded_length = t + pad
        if padded_length > config.max_position_embeddings:
            raise ValueError(
                f"Input length {t} (padded to {padded_length}) exceeds max_position_embeddings="
                f"{config.max_position_embeddings}; truncate the input or convert the model to a longer length."
            )
        if input_ids is not None:
            inputs_embeds = self.embed_tokens(F.pad(input_ids, (0, pad), value=config.pad_token_id))
        else:
            inputs_embeds = F.pad(inputs_embeds, (0, 0, 0, pad))
        visible = F.pad(visible, (0, pad), value=False)  # (n, t')

        positions = self.embed_positions(inputs_embeds[:, :, -1]).to(inputs_embeds.device)  # (n, t', d_model)
        G = config.num_global_tokens
        global_tokens = self.global_embeddings.weight[:G].unsqueeze(0).expand(n, -1, -1)  # (n, G, d_model)
        hidden_states = torch.cat([global_tokens.to(inputs_embeds.dtype), inputs_embeds + positions], dim=1)
        hidden_states = self.layernorm_embedding(hidden_states)  # (n, T, d_model)
        hidden_states = dropout(hidden_states, self.dropout, self.training)
        visible = F.pad(visible, (G, 0), value=True)  # (n, T)

        keep_hidden_states = output_requested(config, kwargs, "output_hidden_states")
        layer_inputs = []
        for layer in self.layers:
            if keep_hidden_states:
                layer_inputs.append(hidden_states)
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            hidden_states = call_layer(self, layer, hidden_states, visible)

        if config.pass_global_tokens_to_decoder:
            hidden_states = hidden_states[:, : G + t]  # (n, G + t, d_model)
        else:
            if config.pool_with_global:
                first = hidden_states[:, :1]  # global token 0
                hidden_states = torch.cat([hidden_states[:, :G], first, hidden_states[:, G + 1 :]], dim=1)
            hidden_states = hidden_states[:, G : G + t]  # (n, t, d_model)
        all_hidden_states = (*layer_inputs, hidden_states) if keep_hidden_states else None
        output = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=None)
        return output if return_dict_requested(config, kwargs) else output.to_tuple()


# ---------------------------------------------------------------------------------------------------------------
# Decoder cross-attention: one set of keys and values per input, shared by its beams
# ---------------------------------------------------------------------------------------------------------------


class LSGBartCrossAttention(BartAttention):
    """BART's decoder cross-attention (same weights) for encoder outputs that are not repeated per beam.

    `generate` keeps one encoder output per input (see `LSGBartForConditionalGeneration`), while the decoder runs
    `g` rows per input (beams, returned sequences), next to each other. The queries of an input's `g` rows attend
    together to its keys and values, which are projected once per input and, in inference, remembered for as long
    as the same encoder output comes back (every step of one `generate` call): no copy per beam, and nothing for
    beam search to reorder. Attention weights are not returned.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: int | None = None):
        super().__init__(
            embed_dim=config.d_model,
            num_heads=config.decoder_attention_heads,
            dropout=config.attention_dropout,
            is_decoder=True,
            config=config,
            **accepted_kwargs(BartAttention.__init__, layer_idx=layer_idx),
        )
        self.remembered = None  # (encoder output, its version, keys, values) of the last inference call

    def forward(self, hidden_states, key_value_states=None, attention_mask=None, layer_head_mask=None, **kwargs):
        if layer_head_mask is not None:
            raise ValueError("LSG-BART: head masks are not supported (transformers 5 removed them too).")
        n_g, q, _ = hidden_states.shape
        n, S, _ = key_value_states.shape
        h, d = self.num_heads, self.head_dim
        if n_g % n:
            raise ValueError(f"LSG-BART cross-attention: {n_g} decoder rows for {n} encoder outputs.")
        g = n_g // n
        key, value = self.keys_and_values(key_value_states)  # (n, h, S, d) each
        query = project(self.q_proj, hidden_states)  # (n*g, q, h*d)
        query = query.view(n, g * q, h, d).transpose(1, 2)  # (n, h, g*q, d): an input's rows together
        if attention_mask is not None:  # (n*g | n, 1, q|1, S), the same for every row of an input
            rows = 1 if attention_mask.shape[0] == n else g  # transformers 5 builds it from the encoder output
            attention_mask = attention_mask[::rows, :, :1]  # (n, 1, 1, S)
        dropout_p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout_p, scale=self.scaling
        )  # (n, h, g*q, d)
        out = out.transpose(1, 2).reshape(n_g, q, h * d)
        return attention_result(project(self.out_proj, out))

    def keys_and_values(self, encoder_output):
        """The keys and values of `encoder_output` (n, S, d_model), each (n, h, S, d); remembered in inference."""
        remembered = self.remembered
        reusable = not (self.training or torch.is_grad_enabled())
        # Inference tensors have no version counter; `generate` does not change its encoder output in place.
        version = None if encoder_output.is_inference() else encoder_output._version
        if reusable and remembered is not None and remembered[0] is encoder_output and remembered[1] == version:
            return remembered[2:]
        n, S, _ = encoder_output.shape
        key, value = (
            project(layer, encoder_output).view(n, S, self.num_heads, self.head_dim).transpose(1, 2)
            for layer in (self.k_proj, self.v_proj)
        )  # (n, h, S, d)
        self.remembered = (encoder_output, version, key, value) if reusable else None
        return key, value


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


class LSGBartModel(LSGBartPreTrainedModel, BartModel):
    """The bare LSG-BART encoder-decoder, outputting the decoder's hidden states."""

    def __init__(self, config: LSGBartConfig):
        PreTrainedModel.__init__(self, config)  # BART's own sub-modules are not built
        embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.shared = BartScaledWordEmbedding(config.vocab_size, config.d_model, config.pad_token_id, embed_scale)
        self.encoder = LSGBartEncoder(config)
        self.decoder = BartDecoder(config)
        for index, layer in enumerate(self.decoder.layers):
            layer.encoder_attn = LSGBartCrossAttention(config, index)
        self.post_init()

    def forget_encoder_outputs(self):
        """Drop the keys and values that the cross-attention layers remember (the end of a `generate` call)."""
        for layer in self.decoder.layers:
            layer.encoder_attn.remembered = None

    def cross_attention_mask(self, attention_mask, encoder_output):
        """The encoder-output mask the decoder sees: one row per encoder output (`generate` repeats the mask per
        beam, not the encoder output), global slots first when the encoder passes them on."""
        config = self.config
        if attention_mask is None:
            return None
        if attention_mask.shape[0] != encoder_output.shape[0]:
            attention_mask = attention_mask[:: attention_mask.shape[0] // encoder_output.shape[0]]  # (n, t)
        if not config.pass_global_tokens_to_decoder:
            return attention_mask
        if config.mask_first_token:
            attention_mask = torch.cat([torch.zeros_like(attention_mask[:, :1]), attention_mask[:, 1:]], dim=1)
        return F.pad(attention_mask, (config.num_global_tokens, 0), value=1)  # (n, G + t)

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, encoder_outputs=None, inputs_embeds=None, **kwargs):
        """Same arguments and outputs as [`BartModel.forward`]."""
        if encoder_outputs is None:
            encoder_kwargs = {k: v for k, v in kwargs.items() if k in ("output_hidden_states", "return_dict")}
            encoder_outputs = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **encoder_kwargs
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=self.cross_attention_mask(attention_mask, encoder_outputs[0]),
            encoder_outputs=encoder_outputs,
            **kwargs,
        )


class LSGBartForConditionalGeneration(LSGBartPreTrainedModel, BartForConditionalGeneration):
    """LSG-BART with a language-modelling head, for summarisation and other generation tasks."""

    def __init__(self, config: LSGBartConfig):
        PreTrainedModel.__init__(self, config)  # BART's own sub-modules are not built
        self.model = LSGBartModel(config)
        self.final_logits_bias = nn.Buffer(torch.zeros((1, self.model.shared.num_embeddings)))
        self.lm_head = nn.Linear(config.d_model, self.model.shared.num_embeddings, bias=False)
        self.post_init()

    def generate(self, *args, **kwargs):
        """[`GenerationMixin.generate`]: the encoder output is kept once per input, not once per beam or returned
        sequence, and the cross-attention keys and values made from it are computed once."""
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.model.forget_encoder_outputs()

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # The decoder's inputs are repeated per beam as usual; the encoder output is not (`LSGBartCrossAttention`).
        encoder_outputs = model_kwargs.pop("encoder_outputs", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=False, input_ids=input_ids, **model_kwargs
        )
        if encoder_outputs is not None:
            model_kwargs["encoder_outputs"] = encoder_outputs
        return input_ids, model_kwargs


class LSGBartForSequenceClassification(LSGBartPreTrainedModel, BartForSequenceClassification):
    """LSG-BART with a classification head on the decoder state of the last `eos` token."""

    def __init__(self, config: LSGBartConfig, **kwargs):
        PreTrainedModel.__init__(self, config)  # BART's own sub-modules are not built
        self.model = LSGBartModel(config)
        self.classification_head = BartClassificationHead(
            config.d_model, config.d_model, config.num_labels, config.classifier_dropout
        )
        self.post_init()


class LSGBartForQuestionAnswering(LSGBartPreTrainedModel, BartForQuestionAnswering):
    """LSG-BART with a span-extraction head (start and end logits) for extractive question answering."""

    def __init__(self, config: LSGBartConfig):
        config.num_labels = 2
        PreTrainedModel.__init__(self, config)  # BART's own sub-modules are not built
        self.num_labels = config.num_labels
        self.model = LSGBartModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


# Encoder-decoder checkpoints keep the decoder's token embeddings (tied) only as `model.shared.weight`: they are
# read from there, so that the decoder alone loads from any LSG-BART checkpoint.
@read_shared_embeddings_as_decoder_embeddings
class LSGBartForCausalLM(LSGBartPreTrainedModel, BartForCausalLM):
    """The LSG-BART decoder alone with a language-modelling head (the decoder has no LSG attention)."""


# ---------------------------------------------------------------------------------------------------------------
# Pipeline: transformers 5 removed its "summarization" pipeline; LSG checkpoints declare this one in their config
# (`custom_pipelines`), so `pipeline("summarization", model=path, trust_remote_code=True)` keeps working.
# ---------------------------------------------------------------------------------------------------------------

class LSGBartSummarizationPipeline(Pipeline):
    """Summarise texts with an LSG-BART checkpoint: `[{"summary_text": ...}]` for each input text.

    Inputs longer than the model (`max_position_embeddings`, or the tokenizer's `model_max_length` if smaller) are
    truncated unless `truncation=False`. Generation arguments (`num_beams`, `max_new_tokens`, `length_penalty`, ...)
    go to `generate()`, at construction or at call time.
    """

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    default_max_new_tokens = 256
    _default_generation_config = GenerationConfig(max_new_tokens=default_max_new_tokens)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = self.tokenizer or pipeline_tokenizer(self.model)

    def _sanitize_parameters(self, truncation=None, clean_up_tokenization_spaces=None, **generate_kwargs):
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {}
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, generate_kwargs, postprocess_params

    def __call__(self, inputs, **kwargs):
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(summaries) == 1 for summaries in result):
            return [summaries[0] for summaries in result]
        return result

    def preprocess(self, text, truncation=True):
        max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        return self.tokenizer(
            text, truncation=truncation, max_length=max_length, return_tensors="pt", return_token_type_ids=False
        )

    def _forward(self, model_inputs, **generate_kwargs):
        generate_kwargs = pipeline_generate_kwargs(self, generate_kwargs, self.default_max_new_tokens)
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs, clean_up_tokenization_spaces=False):
        return [
            {
                "summary_text": self.tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
            }
            for ids in model_outputs["output_ids"]
        ]


LSGBartConfig.register_for_auto_class()
LSGBartModel.register_for_auto_class("AutoModel")
LSGBartForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
LSGBartForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
LSGBartForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
LSGBartForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = [
    "LSGBartConfig",
    "LSGBartEncoder",
    "LSGBartForCausalLM",
    "LSGBartForConditionalGeneration",
    "LSGBartForQuestionAnswering",
    "LSGBartForSequenceClassification",
    "LSGBartModel",
    "LSGBartPreTrainedModel",
    "LSGBartSummarizationPipeline",
    "LSGSelfAttention",
]
