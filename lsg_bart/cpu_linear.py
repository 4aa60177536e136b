"""Linear layers, the feed-forward block and dropout, tuned for CPUs; every other case goes to `F.linear`.

PyTorch sends float32 matrix products to MKL, which on AMD processors runs without AVX-512: where PyTorch runs
AVX-512 kernels, oneDNN reaches more than twice MKL's rate on the same cores; on AVX2-only processors MKL is the
faster (docs/performance.md). There, `linear` sends plain float32 tensors on CPU to oneDNN's linear kernel,
forward and backward (same float32 arithmetic), after probing it once; anything it does not recognise (other
dtypes, tensor subclasses such as quantised weights, autocast, tracing) goes to `F.linear`; a few rows through a
large weight (a decoding step's products) are computed with the weight as the left operand. `project(layer, x)` is `layer(x)`, through `linear` only for a plain `nn.Linear`. `feed_forward` runs
an encoder layer's feed-forward block with these products, keeping less for the backward pass on CPU.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .compat import autocast_enabled, probe, tracing

# oneDNN's linear kernel is slower than MKL's for a few rows through a small weight (decoding): it is used from
# this many rows, or for weights of this many elements (a language-modelling head).
ONEDNN_MIN_ROWS = 32
ONEDNN_MIN_WEIGHT = 2**24
# Up to this many rows through a weight of at least this many elements (a decoding step's products, from bart-base's
# 768 x 768 projections to the LM head), the product is computed with the weight as the left operand
# (`streams_weight`); smaller weights stay in cache, where the form makes no difference.
STREAMED_MAX_ROWS = 16
STREAMED_MIN_WEIGHT = 2**18


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


ONEDNN_LINEAR = find_onednn_linear()
# oneDNN's float32 products beat MKL's where PyTorch runs AVX-512 kernels; with AVX2 only, MKL's are faster.
ONEDNN_PREFERRED = torch.backends.cpu.get_cpu_capability() == "AVX512"


def onednn_linear(x, weight, bias=None, activation="none"):
    """`activation(x @ weight.T + bias)` in one oneDNN call; `activation` is "none" or "gelu" (the exact, erf one)."""
    return ONEDNN_LINEAR(x, weight, bias, activation, [], "none" if activation == "gelu" else "")


def plain_float32_on_cpu(x, weight):
    """`x` and `weight` are plain float32 tensors on CPU (not tensor subclasses such as quantised weights, which
    dispatch `F.linear` themselves), outside tracing: what `linear`'s own products take."""
    return (
        not tracing()
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and type(x) is torch.Tensor
        and type(weight) in (torch.Tensor, nn.Parameter)
    )


def uses_onednn(x, weight):
    """Whether `linear` sends `x @ weight.T` to oneDNN: on a CPU where it is the faster (`ONEDNN_PREFERRED`), for
    `plain_float32_on_cpu` operands, oneDNN enabled, no autocast (it picks its own dtype), and a product large
    enough (a few rows through a small weight, as in a decoding step, go faster through MKL)."""
    return (
        ONEDNN_PREFERRED
        and ONEDNN_LINEAR is not None
        and plain_float32_on_cpu(x, weight)
        and (x.numel() >= ONEDNN_MIN_ROWS * x.shape[-1] or weight.numel() >= ONEDNN_MIN_WEIGHT)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and not autocast_enabled("cpu")
    )


class OneDNNLinear(torch.autograd.Function):
    """`F.linear` in float32 through oneDNN, forward and backward."""

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


def streams_weight(x, weight):
    """Whether `linear` computes `x @ weight.T` as `weight @ x.T`: inference (`plain_float32_on_cpu` operands, no
    gradient asked) of a few rows through a large weight, as in a decoding step. With the weight as the product's
    left operand, MKL streams it through once, about twice as fast as `F.linear` or oneDNN take such a product
    (benchmarks/before_after.py measures it in a decoding step)."""
    return (
        plain_float32_on_cpu(x, weight)
        and x.numel() <= STREAMED_MAX_ROWS * x.shape[-1]
        and weight.numel() >= STREAMED_MIN_WEIGHT
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def linear(x, weight, bias=None):
    """`F.linear(x, weight, bias)`, through oneDNN where `uses_onednn(x, weight)`, or with the weight as the left
    operand where `streams_weight(x, weight)`."""
    if streams_weight(x, weight):
        # MKL streams the weight only with the rows contiguous, their transpose being the right operand; with other
        # strides (such as a transposed product's output) it is slower than `F.linear`. The output is made
        # contiguous again, for the next product.
        rows = x.reshape(-1, x.shape[-1]).contiguous()  # (m, in)
        out = torch.mm(weight, rows.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, rows.t())
        return out.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])  # (..., out)
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
    if training and 0 < p < 1 and x.device.type == "cpu" and not tracing():
        return torch.native_dropout(x, p, True)[0]
    return F.dropout(x, p=p, training=training)


def feed_forward(layer, x, exact_gelu, recompute):
    """BART's feed-forward block of encoder layer `layer` (its `fc1`, `activation_fn`, `activation_dropout`, `fc2`):
    (..., d_model) -> (..., d_model). `exact_gelu`: the activation is the exact (erf) GELU.

    Plain layers with biases around the exact GELU get the GELU fused into fc1's product. With `recompute` (CPU
    training), fc1's output, 4x wider than `x` and the largest tensor a layer would keep, is recomputed in the
    backward pass instead of kept; elsewhere recomputation is left to activation checkpointing, when it is asked for.
    """
    fc1, fc2 = layer.fc1, layer.fc2
    plain = exact_gelu and all(is_plain_linear(fc) and fc.bias is not None for fc in (fc1, fc2))

    def activate_and_project(hidden):  # (..., ffn) -> (..., d_model)
        activated = dropout(layer.activation_fn(hidden), layer.activation_dropout, layer.training)
        return project(fc2, activated)

    if recompute:
        no_activation_dropout = layer.activation_dropout == 0 or not layer.training
        if plain and no_activation_dropout and not autocast_enabled(x.device.type):  # autocast: mixed dtypes
            return RecomputedFeedForward.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        return checkpoint(activate_and_project, project(fc1, x), use_reentrant=False)
    if plain:
        activated = dropout(linear_gelu(x, fc1.weight, fc1.bias), layer.activation_dropout, layer.training)
        return project(fc2, activated)
    return activate_and_project(project(fc1, x))
