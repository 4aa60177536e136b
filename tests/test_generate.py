"""`generate` with one encoder output per input (not per beam): the same tokens and scores as BART's own
cross-attention over encoder outputs repeated per beam, and keys and values projected once per call."""

import copy
import functools

import pytest
import torch
from conftest import padded_batch, tiny_config
from transformers import GenerationMixin
from transformers.models.bart.modeling_bart import BartAttention, BartDecoderLayer

from lsg_bart import LSGBartForConditionalGeneration
from lsg_bart import cpu_linear
from lsg_bart import modeling_lsg_bart as modeling
from lsg_bart.decoder import LSGBartDecoderSelfAttention
from lsg_bart.compat import accepted_kwargs


def with_bart_decoder_layers(model):
    """A copy of `model` that decodes as BART does: encoder outputs repeated per beam, BART's decoder layers."""
    reference = copy.deepcopy(model)
    config = reference.config
    layers = reference.model.decoder.layers
    for index, layer in enumerate(layers):
        plain = BartDecoderLayer(config, **accepted_kwargs(BartDecoderLayer.__init__, layer_idx=index))
        plain.load_state_dict(layer.state_dict())
        plain.train(layer.training)
        layers[index] = plain
    reference._expand_inputs_for_generation = functools.partial(GenerationMixin._expand_inputs_for_generation, reference)
    return reference


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LSGBartForConditionalGeneration(tiny_config(dropout=0.0, attention_dropout=0.0)).eval()


SETTINGS = {
    "greedy": dict(num_beams=1),
    "beam": dict(num_beams=3, output_scores=True, return_dict_in_generate=True),
    "beam_returning_2": dict(num_beams=4, num_return_sequences=2, output_scores=True, return_dict_in_generate=True),
    "sampling_returning_3": dict(do_sample=True, num_return_sequences=3, top_k=20),
    "beam_without_cache": dict(num_beams=3, use_cache=False),
}


@pytest.mark.parametrize("lengths", [[300, 251], [40, 26, 33], [180]], ids=["lsg", "short", "one"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_same_tokens_and_scores_as_bart_decoder_layers(model, setting, lengths):
    input_ids, attention_mask = padded_batch(lengths)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=7, min_new_tokens=7,
                  **SETTINGS[setting])
    results = []
    for candidate in (model, with_bart_decoder_layers(model)):
        torch.manual_seed(1)  # the same draws when sampling
        with torch.no_grad():
            results.append(candidate.generate(**kwargs))
    ours, bart = results
    if isinstance(ours, torch.Tensor):
        assert torch.equal(ours, bart)
    else:
        assert torch.equal(ours.sequences, bart.sequences)
        torch.testing.assert_close(ours.sequences_scores, bart.sequences_scores, rtol=1e-5, atol=1e-5)


def test_keys_and_values_are_projected_once_per_input_and_call(model):
    input_ids, attention_mask = padded_batch([300, 251])
    key_rows, encoder_rows = [], []
    hooks = [
        layer.encoder_attn.k_proj.register_forward_hook(lambda module, args, out: key_rows.append(args[0].shape[0]))
        for layer in model.model.decoder.layers
    ]
    hooks.append(model.model.decoder.layers[0].encoder_attn.register_forward_pre_hook(
        lambda module, args, kwargs: encoder_rows.append(kwargs["key_value_states"].shape[0]), with_kwargs=True
    ))
    try:
        with torch.no_grad():
            model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=4, max_new_tokens=6,
                           min_new_tokens=6)
    finally:
        for hook in hooks:
            hook.remove()
    assert key_rows == [2] * len(model.model.decoder.layers)  # once per layer, for the 2 inputs, not 8 beams
    assert len(encoder_rows) == 6 and set(encoder_rows) == {2}
    assert all(layer.encoder_attn.encoder_keys_values is None for layer in model.model.decoder.layers)


def test_a_plain_forward_pass_keeps_nothing(model):
    input_ids, attention_mask = padded_batch([300, 251])
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :4])
    assert all(layer.encoder_attn.encoder_keys_values is None for layer in model.model.decoder.layers)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_training_forward_with_labels_matches_bart_decoder_layers(dropout):
    """Same loss and gradients as BART's decoder layers, dropout included (the same random draws in the same
    order; the attention's own dropout aside, which BART's fused kernel draws differently)."""
    torch.manual_seed(0)
    config = tiny_config(dropout=dropout, activation_dropout=dropout, attention_dropout=0.0)
    model = LSGBartForConditionalGeneration(config)
    input_ids, attention_mask = padded_batch([300, 251])
    labels = input_ids[:, :9].contiguous()
    losses = []
    for candidate in (copy.deepcopy(model), with_bart_decoder_layers(model)):
        candidate.train()
        torch.manual_seed(1)
        loss = candidate(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        losses.append((loss, candidate.model.decoder.layers[0].encoder_attn.k_proj.weight.grad))
    torch.testing.assert_close(losses[0][0], losses[1][0])
    torch.testing.assert_close(losses[0][1], losses[1][1])


def test_generate_under_inference_mode_gives_the_no_grad_tokens(model):
    input_ids, attention_mask = padded_batch([300, 251])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=3, max_new_tokens=6, min_new_tokens=6)
    with torch.no_grad():
        expected = model.generate(**kwargs)
    with torch.inference_mode():
        assert torch.equal(model.generate(**kwargs), expected)


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_output_attentions_gives_bart_cross_attention_weights_and_no_encoder_attentions(attn_implementation, caplog):
    """Cross-attention weights as BART's own cross-attention computes them (per decoder row, padding at 0); the
    decoder's self-attention weights where transformers computes them (eager); no encoder attention matrix, said
    once."""
    torch.manual_seed(0)
    config = tiny_config(dropout=0.0, attention_dropout=0.0)
    config._attn_implementation = attn_implementation
    model = LSGBartForConditionalGeneration(config).eval()
    bart = with_bart_decoder_layers(model)
    bart.config._attn_implementation = "eager"  # BART returns weights only when it writes them out
    input_ids, attention_mask = padded_batch([300, 251])
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5],
                  output_attentions=True)
    modeling.logger.warning_once.cache_clear()  # said once per process
    with torch.no_grad(), caplog.at_level("WARNING"):
        ours = model(**inputs)
        model(**inputs)
        expected = bart(**inputs)
    assert len(ours.cross_attentions) == config.decoder_layers
    for weights, bart_weights in zip(ours.cross_attentions, expected.cross_attentions):
        assert weights.shape == (2, config.decoder_attention_heads, 5, config.num_global_tokens + 300)
        torch.testing.assert_close(weights, bart_weights, atol=1e-6, rtol=1e-5)
        assert weights[1, :, :, config.num_global_tokens + 251 :].abs().max() == 0  # the padded row's padding
    if attn_implementation == "eager":
        assert len(ours.decoder_attentions) == config.decoder_layers
    assert ours.encoder_attentions is None
    assert sum("computes no attention matrix" in record.getMessage() for record in caplog.records) == 1


def test_generate_from_given_encoder_outputs_gives_the_same_tokens(model):
    """`generate(encoder_outputs=...)`, as pipelines and users who encode once do: accepted, and the same tokens."""
    input_ids, attention_mask = padded_batch([300, 251])
    settings = dict(attention_mask=attention_mask, num_beams=3, max_new_tokens=6, min_new_tokens=6)
    with torch.no_grad():
        expected = model.generate(input_ids=input_ids, **settings)
        encoder_outputs = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        given = model.generate(encoder_outputs=encoder_outputs, **settings)
    assert torch.equal(given, expected)
    assert all(layer.encoder_attn.encoder_keys_values is None for layer in model.model.decoder.layers)


def test_decoding_steps_take_the_streamed_self_attention_and_step_aside_for_attention_weights(model, monkeypatch):
    """On CPU, each decoding step's self-attention runs its products through `cpu_linear` (not BART's forward
    pass); asked for attention weights, it is BART's own, with the same tokens."""
    bart_calls = []
    bart_forward = BartAttention.forward

    def counted(self, *args, **kwargs):
        bart_calls.append(type(self))
        return bart_forward(self, *args, **kwargs)

    monkeypatch.setattr(BartAttention, "forward", counted)
    input_ids, attention_mask = padded_batch([300, 251])
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=3, max_new_tokens=5,
                    min_new_tokens=5, return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        streamed = model.generate(**settings)
        assert LSGBartDecoderSelfAttention not in bart_calls
        implementation, model.config._attn_implementation = model.config._attn_implementation, "eager"
        try:  # BART returns weights only when it writes them out (eager)
            weighed = model.generate(**settings, output_attentions=True)
        finally:
            model.config._attn_implementation = implementation
    assert bart_calls.count(LSGBartDecoderSelfAttention) == 5 * model.config.decoder_layers
    assert torch.equal(streamed.sequences, weighed.sequences)
    assert all(weights is not None for step in weighed.decoder_attentions for weights in step)


def test_weights_large_enough_to_stream_give_the_tokens_and_scores_of_bart_decoder_layers():
    """Decoder weights of 512 x 512 and more: a decoding step's products are streamed (`weight @ x.T`), and beam
    search gives BART's tokens and scores."""
    torch.manual_seed(0)
    config = tiny_config(d_model=512, decoder_ffn_dim=1024, decoder_layers=1, encoder_layers=1, dropout=0.0,
                         attention_dropout=0.0, init_std=0.5)  # fmt: skip
    model = LSGBartForConditionalGeneration(config).eval()
    with torch.no_grad():  # BART starts its biases at zero: draw them, so that they count
        for linear in model.modules():
            if isinstance(linear, torch.nn.Linear) and linear.bias is not None:
                linear.bias.normal_(0.0, 0.5)
    layer = model.model.decoder.layers[0]
    rows = torch.ones(3, 1, config.d_model)  # 3 beams, one position
    with torch.no_grad():
        assert all(cpu_linear.streams_weight(rows, linear.weight) for linear in (layer.self_attn.q_proj, layer.fc1))
    input_ids, attention_mask = padded_batch([300, 251])
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, num_beams=3, max_new_tokens=6,
                    min_new_tokens=6, output_scores=True, return_dict_in_generate=True)  # fmt: skip
    with torch.no_grad():
        ours, bart = (candidate.generate(**settings) for candidate in (model, with_bart_decoder_layers(model)))
    assert len(set(ours.sequences.flatten().tolist())) > 4, "the tokens should vary"
    assert torch.equal(ours.sequences, bart.sequences)
    torch.testing.assert_close(ours.sequences_scores, bart.sequences_scores, rtol=1e-5, atol=1e-5)
