"""The per-token layers of the LSG encoder: oneDNN linear layers for float32 on CPU (the same numbers as
`F.linear`), the recomputed feed-forward block, dropout with boolean masks."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import padded_batch, tiny_config
from torch import nn

from lsg_bart import LSGBartForConditionalGeneration, LSGBartModel
from lsg_bart import cpu_linear
from lsg_bart.cpu_linear import ONEDNN_LINEAR, RecomputedFeedForward, dropout, linear

needs_onednn = pytest.mark.skipif(ONEDNN_LINEAR is None, reason="this PyTorch build has no oneDNN linear kernel")


@needs_onednn
@pytest.mark.parametrize("shape", [(37, 24), (2, 37, 24)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("out_features", [40, 16])  # the weight gradient's operands are taken in either order
def test_onednn_linear_matches_f_linear_forward_and_backward(shape, with_bias, out_features, monkeypatch):
    monkeypatch.setattr(cpu_linear, "ONEDNN_PREFERRED", True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    weight = torch.randn(out_features, 24, generator=generator)
    bias = torch.randn(out_features, generator=generator) if with_bias else None
    grad_out = torch.randn(*shape[:-1], out_features, generator=generator)
    results = []
    for function in (linear, F.linear):
        leaves = [t.clone().requires_grad_() for t in (x, weight, bias) if t is not None]
        out = function(*leaves) if with_bias else function(*leaves, None)
        out.backward(grad_out)
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    (ours, our_grads), (expected, expected_grads) = results
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    for grad, expected_grad in zip(our_grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("frozen_fc1", [False, True])
def test_recomputed_feed_forward_matches_autograd(onednn, frozen_fc1, monkeypatch):
    monkeypatch.setattr(cpu_linear, "ONEDNN_PREFERRED", onednn)
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(24, 40), nn.Linear(40, 24)
    fc1.requires_grad_(not frozen_fc1)
    x = torch.randn(2, 37, 24)
    grad_out = torch.randn(2, 37, 24)
    results = []
    with torch.backends.mkldnn.flags(enabled=onednn):
        for recomputed in (True, False):
            leaf = x.clone().requires_grad_()
            if recomputed:
                out = RecomputedFeedForward.apply(leaf, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
            else:
                out = fc2(F.gelu(fc1(leaf)))
            out.backward(grad_out)
            grads = [leaf.grad] + [p.grad for p in (*fc1.parameters(), *fc2.parameters())]
            results.append((out.detach(), grads))
            for p in (*fc1.parameters(), *fc2.parameters()):
                p.grad = None
    (ours, our_grads), (expected, expected_grads) = results
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    for grad, expected_grad in zip(our_grads, expected_grads):
        if expected_grad is None:
            assert grad is None
        else:
            torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-5)


def count_onednn_calls(monkeypatch):
    """The fused activation of each oneDNN call, with oneDNN preferred as on an AVX-512 processor."""
    monkeypatch.setattr(cpu_linear, "ONEDNN_PREFERRED", True)
    calls = []

    def counting(*args):
        calls.append(args[3])  # the fused activation
        return ONEDNN_LINEAR(*args)

    monkeypatch.setattr(cpu_linear, "ONEDNN_LINEAR", counting)
    return calls


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration")  # printed by torch.backends.mkldnn.flags on CPU builds
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_encoder_with_and_without_onednn_gives_the_same_outputs_and_gradients(attn_implementation, monkeypatch):
    config = tiny_config(dropout=0.0, attention_dropout=0.0, attn_implementation=attn_implementation)
    model = LSGBartModel(config).train()
    input_ids, attention_mask = padded_batch([300, 237])
    calls = count_onednn_calls(monkeypatch)

    def run():
        with torch.no_grad():
            inferred = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        out.pow(2).mean().backward()
        grads = {name: p.grad.clone() for name, p in model.encoder.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return inferred, out.detach(), grads

    inferred, trained, grads = run()
    assert "gelu" in calls and "none" in calls  # fc1 fused with its activation, and plain products
    with torch.backends.mkldnn.flags(enabled=False):
        calls.clear()
        expected_inferred, expected_trained, expected_grads = run()
        assert not calls
    torch.testing.assert_close(inferred, expected_inferred, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trained, expected_trained, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys() and any("fc1" in name for name in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_seq2seq_model_with_and_without_onednn_gives_the_same_loss_gradients_and_generation(monkeypatch):
    model = LSGBartForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0))
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    assert all(type(module) is nn.Linear for module in linears)  # plain modules: the encoder's code picks oneDNN
    assert model.lm_head.weight is model.model.shared.weight  # still tied
    input_ids, attention_mask = padded_batch([300, 237])
    labels = padded_batch([20, 14], seed=1)[0]
    calls = count_onednn_calls(monkeypatch)

    def run():
        model.train()
        model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        model.eval()
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=2)
        return grads, generated

    grads, generated = run()
    assert len(calls) > 0
    with torch.backends.mkldnn.flags(enabled=False):
        expected_grads, expected_generated = run()
    assert torch.equal(generated, expected_generated)
    assert grads.keys() == expected_grads.keys() and any("decoder" in name for name in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


SCALE = 100.0  # large enough to change the attention of a freshly initialised model


class Scaled(nn.Module):
    """A wrapped layer (as LoRA or quantisation wrap them): its own forward must run."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return SCALE * self.layer(x)


@pytest.mark.parametrize("name", ["q_proj", "out_proj", "fc1", "fc2"])
def test_wrapped_or_hooked_linear_layers_run_their_own_forward(name):
    model = LSGBartModel(tiny_config()).eval()
    input_ids, attention_mask = padded_batch([300, 237])

    def encode():
        with torch.no_grad():
            return model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def layer_owner(layer):
        return layer.self_attn if name.endswith("proj") else layer

    originals = [getattr(layer_owner(layer), name) for layer in model.encoder.layers]
    with torch.no_grad():
        for layer in originals:
            layer.weight.mul_(SCALE)
            layer.bias.mul_(SCALE)
    expected = encode()
    with torch.no_grad():
        for layer in originals:
            layer.weight.div_(SCALE)
            layer.bias.div_(SCALE)
    plain = encode()
    for layer, original in zip(model.encoder.layers, originals):
        setattr(layer_owner(layer), name, Scaled(original))
    wrapped = encode()
    for layer, original in zip(model.encoder.layers, originals):
        original.register_forward_hook(lambda module, args, output: SCALE * output)
        setattr(layer_owner(layer), name, original)
    hooked = encode()
    assert not torch.allclose(plain, expected, atol=1e-2)
    torch.testing.assert_close(wrapped, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(hooked, expected, atol=1e-4, rtol=1e-4)


def test_dropout_zeroes_and_rescales_like_f_dropout():
    x = torch.randn(4, 1000, 16, requires_grad=True)
    out = dropout(x, 0.25, True)
    kept = out != 0
    assert 0.2 < 1 - kept.float().mean().item() < 0.3
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert dropout(x, 0.25, False) is x
    assert torch.equal(dropout(x, 1.0, True), torch.zeros_like(x))


@needs_onednn
def test_onednn_kernel_is_only_used_where_it_is_available_and_correct(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")  # e.g. an ARM processor
    assert cpu_linear.find_onednn_linear() is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_linear.find_onednn_linear() is ONEDNN_LINEAR
    wrong = SimpleNamespace(default=lambda x, weight, *args: torch.zeros(x.shape[0], weight.shape[0]))
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", wrong)
    assert cpu_linear.find_onednn_linear() is None
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", None)
    assert cpu_linear.find_onednn_linear() is None
    # Without the kernel, `linear` is F.linear.
    monkeypatch.setattr(cpu_linear, "ONEDNN_LINEAR", None)
    assert not cpu_linear.uses_onednn(torch.ones(2, 3), torch.ones(4, 3))


@needs_onednn
def test_onednn_is_preferred_where_pytorch_runs_avx512_kernels_and_mkl_elsewhere(monkeypatch):
    rows, weight = torch.ones(cpu_linear.ONEDNN_MIN_ROWS, 8), torch.ones(16, 8)
    preferred = torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert cpu_linear.ONEDNN_PREFERRED == preferred == cpu_linear.uses_onednn(rows, weight)
    monkeypatch.setattr(cpu_linear, "ONEDNN_PREFERRED", False)  # as with AVX2 only
    assert not cpu_linear.uses_onednn(rows, weight)
    torch.testing.assert_close(linear(rows, weight), F.linear(rows, weight))


@needs_onednn
def test_few_rows_through_a_small_weight_go_through_f_linear(monkeypatch):
    monkeypatch.setattr(cpu_linear, "ONEDNN_PREFERRED", True)
    few, rows = torch.ones(4, 8), torch.ones(cpu_linear.ONEDNN_MIN_ROWS, 8)
    assert not cpu_linear.uses_onednn(few, torch.ones(16, 8))  # a decoding step's products
    assert cpu_linear.uses_onednn(rows, torch.ones(16, 8))
    head = torch.ones(1, 8).expand(cpu_linear.ONEDNN_MIN_WEIGHT // 8, 8)  # a language-modelling head, not allocated
    assert cpu_linear.uses_onednn(few, head)


@pytest.mark.parametrize("with_bias", [False, True])
def test_few_rows_through_a_large_weight_stream_it_with_the_same_result(with_bias):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(cpu_linear.STREAMED_MIN_WEIGHT // 64, 64, generator=generator)  # an LM head's shape
    bias = torch.randn(weight.shape[0], generator=generator) if with_bias else None
    x = torch.randn(2, 3, 64, generator=generator)  # 6 rows: beams of a decoding step
    assert cpu_linear.streams_weight(x, weight)
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias))
    assert linear(x, weight, bias).shape == (2, 3, weight.shape[0])
    assert linear(x, weight, bias).is_contiguous()
    # Rows with other strides (a transposed product's output) give the same result, contiguous.
    strided = torch.randn(64, 6, generator=generator).t().reshape(2, 3, 64)
    assert not strided.is_contiguous()
    torch.testing.assert_close(linear(strided, weight, bias), F.linear(strided, weight, bias))
    assert linear(strided, weight, bias).is_contiguous()
    # Not for many rows, other dtypes, a smaller weight, or where autograd needs the product.
    assert not cpu_linear.streams_weight(torch.randn(cpu_linear.STREAMED_MAX_ROWS + 1, 64), weight)
    assert not cpu_linear.streams_weight(x.bfloat16(), weight.bfloat16())
    assert not cpu_linear.streams_weight(x, weight[: weight.shape[0] // 2])
    assert not cpu_linear.streams_weight(x, nn.Parameter(weight))


class TaggedTensor(torch.Tensor):
    """A tensor subclass standing for quantised or distributed weights, which handle `F.linear` themselves."""


@needs_onednn
def test_tensor_subclass_weights_and_other_dtypes_go_through_f_linear(monkeypatch):
    monkeypatch.setattr(cpu_linear, "ONEDNN_PREFERRED", True)
    x, weight = torch.ones(32, 3), torch.ones(4, 3)
    assert cpu_linear.uses_onednn(x, weight) and cpu_linear.uses_onednn(x, nn.Parameter(weight))
    assert not cpu_linear.uses_onednn(x, weight.as_subclass(TaggedTensor))
    assert not cpu_linear.uses_onednn(x.bfloat16(), weight.bfloat16())
    out = linear(x, weight.as_subclass(TaggedTensor))
    assert type(out) is TaggedTensor  # F.linear ran, with the subclass's dispatch
