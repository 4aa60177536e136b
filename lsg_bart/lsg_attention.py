"""LSG attention as `docs/LSG-SPEC.md` describes it: build blocks, pick sparse tokens, attend.

- Blocks: each block of `bs` tokens attends to its local window (itself and its two neighbours, views of the
  keys), to `sbs` sparse tokens before and after that window, and to the global tokens (section 4).
- Sparse tokens: each selector compresses the t keys and values to t/f tokens (section 5).
- Attend: `lsg_attention` hands the query blocks and their key sets (`key_sets` lays them out as
  `lsg_kernels.KeySets`), or the whole key bank and the mask function `lsg_mask` (the pattern written as one
  boolean function of the indices), to the `Kernel` that the encoder chose for the forward pass
  (`lsg_kernels.choose_kernel`); the `reference` kernel writes that mask out densely.

Shapes: n batch, h heads, T tokens with the global ones, t tokens without them (a multiple of the block size),
d head dim, G global tokens, bs block size, nb = t / bs blocks, f sparsity factor, sbs sparse block size,
tpb = bs / f sparse tokens per block. Masks are boolean, True for a visible key, and carry a trailing singleton
so that one function handles keys (..., d) and masks (..., 1) alike.
"""

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .compat import probe
from .lsg_kernels import Kernel, KeySets
from .lsg_settings import SPARSITY_TYPES, named_table

# PyTorch's own unfold backward, for windows whose step does not divide their size.
UNFOLD_BACKWARD = probe(lambda: torch.ops.aten.unfold_backward(torch.ones(1, 2, 3), (1, 5), 1, 3, 2).sum() == 6)


class AttentionInputs(NamedTuple):
    """A layer's queries, keys and values, laid out so that every local window is a view of the keys."""

    query: torch.Tensor  # (n, h, T, d)
    # (n, h, margin + T + bs, d): the T tokens start at `margin`, with zeros around them; just (n, h, T, d) for
    # inputs short enough for full attention
    key: torch.Tensor
    value: torch.Tensor  # as `key`
    visible: torch.Tensor  # (n, 1, T, 1) bool
    margin: int


class AttentionSettings(NamedTuple):
    """How one layer attends: the LSG settings, the kernel the encoder chose, the scale and dropout of the scores."""

    config: Any  # an `LSGBartConfig`
    kernel: Kernel
    scale: float
    dropout: float
    layer_idx: Optional[int] = None  # seeds the `lsh` selector, layer by layer


def chunk_starts(total, size):
    """The first index of each `size`-long chunk of `total` (all of it for None). One chunk is `(0,)`, not a
    `range`: a `range` over a length that torch.export keeps symbolic would fix the exported graph to the example
    input's length."""
    return (0,) if size is None or size >= total else range(0, total, size)


# ---------------------------------------------------------------------------------------------------------------
# Blocks and windows
# ---------------------------------------------------------------------------------------------------------------


class OverlappingWindows(torch.autograd.Function):
    """Windows of `size` positions every `step` positions along dim 2, as a view: (n, h, L, c) -> (n, h, w, size, c).

    The view is `x.unfold(2, size, step)`. Its backward pass adds each window's gradient back in `size / step`
    slices where `step` divides `size`; PyTorch's own `unfold` backward indexes every element, which is much slower.
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


def windows(x, size, step, traced):
    """`OverlappingWindows`, or the plain `unfold` view while `traced` (torch.compile, export)."""
    if traced:
        return x.unfold(2, size, step).transpose(-1, -2)  # (n, h, w, size, c)
    return OverlappingWindows.apply(x, size, step)


def local_windows(x, block_size, traced):
    """Each block with its left and right neighbour, as overlapping views.

    x: (n, h, bs + t + bs, c), the t tokens with one block of margin on each side (the mask hides the margins,
    so their content is never seen) -> (n, h, nb, 3*bs, c).
    """
    return windows(x, 3 * block_size, block_size, traced)


def pad_for_sparse_windows(x, tokens_per_block, sparse_block_size):
    """(n, h, t/f, c) compressed tokens -> (n, h, t/f + 2*(sbs + tpb), c), zeros/False on both sides."""
    margin = sparse_block_size + tokens_per_block
    return F.pad(x, (0, 0, margin, margin))


def sparse_windows(padded, tokens_per_block, sparse_block_size, first, blocks, traced):
    """The compressed tokens just before and just after the local windows of blocks [first, first + blocks).

    `padded` comes from `pad_for_sparse_windows`: the t/f compressed tokens, `tokens_per_block` (= bs/f) of them
    per block. Block i's local window covers compressed positions [(i-1)*tpb, (i+2)*tpb); it sees `sbs` tokens
    before it and `sbs` after it. Returns the two parts as views, each (n, h, blocks, sbs, c); positions
    outside the sequence are 0/False.
    """
    tpb, sbs = tokens_per_block, sparse_block_size
    after_shift = sparse_after_shift(tpb)
    span = (blocks - 1) * tpb + sbs  # the padded positions the group's windows cover
    # In padded coordinates block i's "before" part starts at i*tpb and its "after" part at i*tpb + sbs + 3*tpb.
    parts = []
    for offset in (0, sbs + 3 * tpb - after_shift):
        begin = first * tpb + offset
        parts.append(windows(padded[:, :, begin : begin + span], sbs, tpb, traced))  # (n, h, blocks, sbs, c)
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
    """In each chunk and head, the chunk/f keys of largest L2 norm, in ascending order of norm (no gradient).

    Norms are compared in float32: in half precision, keys of nearly equal norm round to ties, and which of them
    is kept flips from one run (or precision) to the next.
    """
    n, h, t, _ = keys.shape
    with torch.no_grad():
        norms = keys.float().norm(dim=-1, keepdim=True).masked_fill(~mask, 0)  # (n, h, t, 1) float32
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
    """Merge the tokens of each chunk by LSH buckets: `pre_rounds` rounds into c buckets, then c/f buckets.

    Hashes and sums are computed in float32 (autocast off), whatever the keys' precision: a half-precision
    projection near a hyperplane sends a token to another bucket, and the merged sums of one round are hashed
    again in the next.
    """
    n, h, t, d = keys.shape
    with torch.autocast(keys.device.type, enabled=False):
        weight = mask.float().expand(n, h, t, 1)
        chunked = (n, h, t // chunk_size, chunk_size, -1)
        k, v = (keys.float() * weight).view(chunked), (values.float() * weight).view(chunked)
        counts = weight.reshape(chunked)
        for num_buckets in [chunk_size] * pre_rounds + [chunk_size // factor]:
            k, v, counts = lsh_merge(k, v, counts, num_buckets, generator)  # (n, h, t/c, buckets, d)
        k, v, counts = (x.reshape(n, h, t // factor, -1) for x in (k, v, counts))
        # Counts are whole numbers: dividing by max(count, 1) equals the original's count + 1e-8 in float32.
        k, v = (x / counts.clamp_min(1) for x in (k, v))
    return k.to(keys.dtype), v.to(values.dtype), counts > 0


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


class SelectionContext(NamedTuple):
    """What a selector reads besides the keys, values and mask."""

    config: Any  # an `LSGBartConfig`
    first_query: torch.Tensor  # (n, h, 1, d), scaled: the first non-global token's query (`bos_pooling`)
    layer_idx: Optional[int]  # seeds `lsh`, layer by layer

    @property
    def factor(self):
        return self.config.sparsity_factor

    @property
    def chunk_size(self):
        """The span that `norm` and `lsh` select from, chunk by chunk."""
        return min(self.config.block_size, self.config.sparse_block_size)


def lsh_selector(keys, values, mask, context):
    """`select_by_lsh`, with the generator of `lsh_seed` (torch's global one without it); as the original, bos
    pooling when f == sparse_block_size."""
    config = context.config
    if context.factor == config.sparse_block_size:
        return select_by_bos_pooling(keys, values, mask, context.first_query, context.factor)
    generator = None
    if config.lsh_seed is not None:
        generator = torch.Generator(device=keys.device).manual_seed(config.lsh_seed + (context.layer_idx or 0))
    return select_by_lsh(keys, values, mask, context.chunk_size, context.factor, config.lsh_num_pre_rounds, generator)


# Each sparsity type's selector: (keys, values, mask, SelectionContext) -> t/f sparse keys, values and mask; "none"
# has no sparse tokens. Keyed by exactly the names that the config accepts.
SELECTORS = named_table(
    SPARSITY_TYPES,
    {
        "none": None,
        "norm": lambda k, v, mask, c: select_by_norm(k, v, mask, c.chunk_size, c.factor),
        "pooling": lambda k, v, mask, c: select_by_pooling(k, v, mask, c.factor),
        "lsh": lsh_selector,
        "stride": lambda k, v, mask, c: select_by_stride(k, v, mask, c.factor),
        "block_stride": lambda k, v, mask, c: select_by_block_stride(k, v, mask, c.factor, c.config.block_size),
        "bos_pooling": lambda k, v, mask, c: select_by_bos_pooling(k, v, mask, c.first_query, c.factor),
    },
)


def select_sparse_tokens(keys, values, visible, first_query, config, layer_idx):
    """Compress (n, h, t, d) keys and values and their mask to t/f sparse tokens with the configured selector, or
    None for `sparsity_type="none"`.

    `first_query` (n, h, 1, d), scaled, is the first non-global token's query (for `bos_pooling`).
    """
    selector = SELECTORS[config.sparsity_type]
    if selector is None:
        return None
    if config.sparsity_factor == 1:
        return keys, values, visible
    return selector(keys, values, visible, SelectionContext(config, first_query, layer_idx))


# ---------------------------------------------------------------------------------------------------------------
# The pattern as one function of the indices
# ---------------------------------------------------------------------------------------------------------------


def sparse_after_shift(tokens_per_block):
    """The original code starts the "after" part 2 positions early when tpb is odd; checkpoints expect it."""
    return 2 if tokens_per_block % 2 == 1 else 0


def lsg_mask(config, visible, sparse_visible):
    """`sees(b, h, q, k)`: whether query row q of batch b, head h sees entry k of the key bank.

    The key bank is the T tokens (global ones first) followed by the S sparse tokens. visible (n, T) and
    sparse_visible (n, h, S) or None are boolean. The arguments are index tensors that broadcast together (the
    reference kernel) or scalars (FlexAttention's `mask_mod`). Global rows see every visible token; block i's rows
    see the global tokens, tokens [(i-1)*bs, (i+2)*bs) after them, and the sparse tokens just before and after
    that window: [(i-1)*tpb - sbs, (i-1)*tpb) and [(i+2)*tpb - shift, (i+2)*tpb - shift + sbs).
    """
    G, bs = config.num_global_tokens, config.block_size
    tpb, sbs = bs // config.sparsity_factor, config.sparse_block_size
    shift = sparse_after_shift(tpb)

    def sees(b, h, q, k):
        # T and S are read from the tensors here, not captured as numbers: a compiled block mask (the CUDA path)
        # then stays one graph for every length.
        T = visible.shape[-1]
        token = k < T
        token_visible = visible[b, k.clamp(max=T - 1)]
        block = (q - G) // bs  # meaningless for global rows, which the `where` below ignores
        position = k - G  # among the non-global tokens
        local = (k >= G) & (position >= (block - 1) * bs) & (position < (block + 2) * bs)
        block_row = (k < G) | (token & local & token_visible)
        if sparse_visible is not None and sparse_visible.shape[-1] > 0:
            s = k - T  # among the sparse tokens
            before = (s >= (block - 1) * tpb - sbs) & (s < (block - 1) * tpb)
            after = (s >= (block + 2) * tpb - shift) & (s < (block + 2) * tpb - shift + sbs)
            seen = sparse_visible[b, h, s.clamp(0, sparse_visible.shape[-1] - 1)]
            block_row = block_row | (~token & (before | after) & seen)
        return torch.where(q < G, token & token_visible, block_row)

    return sees


# ---------------------------------------------------------------------------------------------------------------
# Attend
# ---------------------------------------------------------------------------------------------------------------


def lsg_attention(inputs, settings):
    """LSG attention of an `AttentionInputs` bundle with the `AttentionSettings`: (n, T, h, d).

    Inputs of at most two blocks after the global tokens get full attention.
    """
    query, key, value, visible, margin = inputs
    config, kernel, scale, dropout = settings.config, settings.kernel, settings.scale, settings.dropout
    n, h, T, d = query.shape
    G, bs, sbs = config.num_global_tokens, config.block_size, config.sparse_block_size
    tokens = (key[:, :, margin : margin + T], value[:, :, margin : margin + T])  # (n, h, T, d)
    if T <= 2 * bs + G:
        return kernel.attend(query, *tokens, visible.transpose(-1, -2), scale, dropout).transpose(1, 2)
    start = margin + G  # where the non-global tokens begin in `key` and `value`
    rest = (key[:, :, start : margin + T], value[:, :, start : margin + T], visible[:, :, G:])  # (n, h|1, t, d|1)
    sparse = None
    if sbs > 0:
        first_query = query[:, :, G : G + 1] * scale
        sparse = select_sparse_tokens(*rest, first_query, config, settings.layer_idx)  # (n, h|1, t/f, d|1)

    if kernel.attend_sequence is not None:
        (bank_key, bank_value), sparse_visible = tokens, None
        if sparse:
            bank_key = torch.cat([bank_key, sparse[0].expand(n, h, -1, d)], dim=2)  # (n, h, T + S, d)
            bank_value = torch.cat([bank_value, sparse[1].expand(n, h, -1, d)], dim=2)
            sparse_visible = sparse[2].expand(n, h, -1, 1)[..., 0]  # (n, h, S)
        sees = lsg_mask(config, visible[:, 0, :, 0], sparse_visible)
        out = kernel.attend_sequence(query, bank_key, bank_value, sees, scale, dropout)  # (n, h, T, d)
        return out.transpose(1, 2)

    global_out = kernel.attend(query[:, :, :G], *tokens, visible.transpose(-1, -2), scale, dropout)  # (n, h, G, d)
    if kernel.recompute_key_sets:
        # The joined key sets are several times the size of the keys: rebuilding them in the backward pass
        # instead of keeping them saves most of the attention's memory for a small share of its time.
        block_out = checkpoint(block_attention, inputs, sparse, settings, use_reentrant=False)
    else:
        block_out = block_attention(inputs, sparse, settings)
    return torch.cat([x.transpose(1, 2) for x in (global_out, *block_out)], dim=1)  # (n, T, h, d)


def key_sets(local, others, n, h):
    """`KeySets` from (key, value, visible) triples of shape (n, h|1, g, k, d|1): the local window and the other
    key sets in order, with n*h as the kernels' batch."""

    def batched(x):  # (n, h|1, g, k, d) -> (n*h, g, k, d)
        return x.expand(n, h, -1, -1, -1).flatten(0, 1)

    def joined_visible(masks):  # (n, h|1, g, k_i, 1) each -> (n*h, g, 1, K)
        masks = [m.squeeze(-1) for m in masks]  # (n, h|1, g, k_i)
        heads = max(m.shape[1] for m in masks)
        visible = torch.cat([m.expand(n, heads, -1, -1) for m in masks], dim=3)  # (n, h|1, g, K)
        return visible.expand(n, h, -1, -1).reshape(n * h, -1, 1, visible.shape[-1])

    others_key, others_value, others_visible = zip(*others)
    return KeySets(
        batched(local[0]),
        batched(local[1]),
        joined_visible([local[2]]),
        tuple(batched(k) for k in others_key),
        tuple(batched(v) for v in others_value),
        joined_visible(others_visible),
    )


def block_attention(inputs, sparse, settings):
    """The rows after the global tokens, block by block: a tuple of (n, h, rows, d) outputs, in order.

    `sparse` holds the sparse tokens (keys, values, mask), each (n, h|1, t/f, d|1), or is None.
    """
    query, key, value, visible, margin = inputs
    config, kernel = settings.config, settings.kernel
    n, h, T, d = query.shape
    G, bs, sbs = config.num_global_tokens, config.block_size, config.sparse_block_size
    tpb = bs // config.sparsity_factor
    nb = (T - G) // bs
    start = margin + G
    global_kv = (key[:, :, margin:start], value[:, :, margin:start], visible[:, :, :G])  # (n, h|1, G, d|1)
    padded_sparse = [pad_for_sparse_windows(x, tpb, sbs) for x in sparse] if sparse else []  # (n, h|1, ., d|1)
    with_margins = (key[:, :, start - bs :], value[:, :, start - bs :], F.pad(visible[:, :, G:], (0, 0, bs, bs)))
    block_query = query[:, :, G:].reshape(n * h, nb, bs, d)  # (n*h, nb, bs, d), a view
    # On CPU, groups of blocks are attended one after the other, so that their joined key sets stay small. Each
    # group's windows are views cut from its own stretch of tokens: in the backward pass they fill gradients of
    # that stretch, not zero-filled gradients the size of every window.
    group_size = max(1, kernel.token_chunk // bs) if kernel.token_chunk else nb
    outputs = []
    for first in chunk_starts(nb, group_size):
        blocks = min(group_size, nb - first)
        # The other key sets as (key, value, visible) triples of shape (n, h|1, blocks, k, d|1), in the spec's
        # order: global tokens, then the sparse window before and after the block.
        others = [tuple(x.unsqueeze(2).expand(-1, -1, blocks, -1, -1) for x in global_kv)]
        if padded_sparse:
            parts = [sparse_windows(x, tpb, sbs, first, blocks, kernel.traced) for x in padded_sparse]
            others += list(zip(*parts))
        stretch = slice(first * bs, (first + blocks + 2) * bs)  # the group's blocks and one on each side
        local = tuple(local_windows(x[:, :, stretch], bs, kernel.traced) for x in with_margins)  # (n, h|1, g, 3bs, .)
        group_keys = key_sets(local, others, n, h)
        out = kernel.attend_blocks(block_query[:, first : first + blocks], group_keys, settings.scale, settings.dropout)
        outputs.append(out.reshape(n, h, blocks * bs, d))  # (n, h, g*bs, d)
    return tuple(outputs)
