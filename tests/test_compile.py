"""torch.compile (inductor), torch.export and ONNX export (torch.onnx.export with dynamo=True) of the LSG encoder:
the same results as eager, public ops only while tracing, no graph break inside an encoder layer; and `generate`
with the model's forward compiled as one graph (transformers' static-cache recipe)."""

import importlib.util

import pytest
import torch
from conftest import PARITY, padded_batch, tiny_config
from safetensors.torch import load_file

from lsg_bart import LSGBartForConditionalGeneration, LSGBartModel
from lsg_bart.lsg_kernels import choose_kernel


def small_encoder():
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return LSGBartModel(config).encoder


def test_no_graph_break_inside_an_encoder_layer():
    encoder = small_encoder().eval()
    layer = encoder.layers[0]
    hidden_states = torch.randn(2, 16 * 10 + 2, 32)
    visible = torch.ones(2, 16 * 10 + 2, dtype=torch.bool)
    visible[1, -20:] = False

    def chosen_and_layer(hidden_states, visible):  # as the encoder runs a layer: the kernel chosen while traced
        return layer(hidden_states, visible, choose_kernel("auto", hidden_states, 0.0))

    for grad in (False, True):
        torch._dynamo.reset()
        with torch.set_grad_enabled(grad):
            explanation = torch._dynamo.explain(chosen_and_layer)(hidden_states, visible)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


def test_compiled_encoder_matches_the_parity_fixture_and_eager_in_inference_and_training():
    """One compiled encoder serves both checks, so that inductor compiles one inference and one training graph (a
    minute of C++ compilation on 2 cores with a cold cache). Dropout is off for the training comparison."""
    model = LSGBartForConditionalGeneration.from_pretrained(PARITY / "norm", dropout=0.0, attention_dropout=0.0)
    inputs = load_file(PARITY / "norm" / "inputs.safetensors")  # a padded batch: 300 and 263 tokens
    expected = load_file(PARITY / "norm" / "expected.safetensors")
    encoder_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    encoder = model.model.encoder
    torch._dynamo.reset()
    compiled = model.model.encoder = torch.compile(encoder)
    with torch.no_grad():
        outputs = model.eval()(**inputs)
        eager_out = encoder(**encoder_inputs).last_hidden_state
    assert (outputs.encoder_last_hidden_state - expected["encoder_last_hidden_state"]).abs().max() < 1e-4
    assert (outputs.logits - expected["logits"]).abs().max() < 1e-4
    torch.testing.assert_close(outputs.encoder_last_hidden_state, eager_out, atol=1e-5, rtol=1e-5)

    grads = []
    for module in (encoder, compiled):
        encoder.zero_grad()
        module.train()(**encoder_inputs).last_hidden_state.pow(2).mean().backward()
        grads.append({name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


needs_onnx = pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")),
    reason="ONNX export needs onnx, onnxscript and onnxruntime (the dev extra installs them)",
)


def one_layer_encoder_with_dynamic_shapes():
    """A seq2seq model's encoder with one layer (every layer is traced the same way, and an export's time grows with
    the layers), an example input, and `dynamic_shapes` for a dynamic batch and length: any length that LSG
    attention covers (above two blocks), padded inside the graph. `Dim.DYNAMIC`, not a named `Dim`: the program
    holds guards that are true at every length but that torch.export cannot prove, and a named `Dim` refuses them."""
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, encoder_layers=1)
    encoder = LSGBartForConditionalGeneration(config).get_encoder().eval()
    assert type(encoder) is type(LSGBartModel(config).encoder)  # the seq2seq model's encoder is the default one
    bs = encoder.config.block_size
    example = torch.randint(5, 100, (2, 12 * bs))
    length = torch.export.Dim.DYNAMIC(min=2 * bs + 1, max=encoder.config.max_position_embeddings)
    batch = torch.export.Dim.DYNAMIC(min=1, max=64)
    return encoder, (example, torch.ones_like(example)), ({0: batch, 1: length}, {0: batch, 1: length})


def other_lengths(encoder):
    """Inputs of other lengths than the example's, multiples of the block size and not, with padded rows, and the
    eager encoder's output on each."""
    bs = encoder.config.block_size
    for length, pad in ((5 * bs, 0), (12 * bs - 7, 3), (20 * bs + 5, bs + 1), (2 * bs + 1, 0)):
        input_ids, attention_mask = padded_batch([length, length - pad] if pad else [length])
        with torch.no_grad():
            expected = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        yield input_ids, attention_mask, expected


def test_torch_export_keeps_the_length_dynamic():
    """No Python `range` over the length while tracing: it would fix the program to the example's length."""
    encoder, example, dynamic_shapes = one_layer_encoder_with_dynamic_shapes()
    program = torch.export.export(encoder, example, dynamic_shapes=dynamic_shapes)
    for input_ids, attention_mask, expected in other_lengths(encoder):
        with torch.no_grad():
            exported = program.module()(input_ids, attention_mask).last_hidden_state
        torch.testing.assert_close(exported, expected, atol=1e-5, rtol=1e-5)


@needs_onnx
def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_length(tmp_path):
    import onnxruntime

    encoder, example, dynamic_shapes = one_layer_encoder_with_dynamic_shapes()
    path = tmp_path / "encoder.onnx"
    torch.onnx.export(encoder, example, str(path), dynamo=True, input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamic_shapes=dynamic_shapes)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for input_ids, attention_mask, expected in other_lengths(encoder):
        (ours,) = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        torch.testing.assert_close(torch.from_numpy(ours), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_with_a_static_cache_and_a_fullgraph_compiled_forward_gives_eager_tokens(num_beams):
    """transformers' recipe for compiled decoding: nothing in a decoding step may break the graph (`fullgraph=True`
    raises at the first break). Weights drawn wide (init_std 0.5) so that the tokens vary from step to step."""
    torch.manual_seed(5)  # a draw whose tokens vary over the 6 steps
    model = LSGBartForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0, init_std=0.5)).eval()
    input_ids, attention_mask = padded_batch([300, 251])  # LSG attention and a padded row
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6,
                    num_beams=num_beams, return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        eager = model.generate(**settings)
        model.forward = torch.compile(model.forward, fullgraph=True)
        compiled = model.generate(**settings, cache_implementation="static")
    assert len(set(eager.sequences[1].tolist())) > 3, "the tokens should vary"
    assert torch.equal(compiled.sequences, eager.sequences)
    for step_compiled, step_eager in zip(compiled.logits, eager.logits):
        torch.testing.assert_close(step_compiled, step_eager, rtol=1e-4, atol=1e-4)
