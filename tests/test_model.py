"""The Hugging Face flow on tiny LSG-BART models: every sparsity type, heads, generation, saving, dtypes."""

import json
import warnings

import pytest
import torch
from conftest import padded_batch, tiny_config

from lsg_bart import (
    SPARSITY_TYPES,
    LSGBartConfig,
    LSGBartForCausalLM,
    LSGBartForConditionalGeneration,
    LSGBartForQuestionAnswering,
    LSGBartForSequenceClassification,
    LSGBartModel,
)
from lsg_bart.compat import CACHE_ARGUMENT

# Below two blocks (full attention), not a multiple of the block size, and more than 20 blocks of 16.
LENGTHS = [25, 150, 400]


@pytest.mark.parametrize(
    "field, value",
    [
        ("sparsity_type", "random"),
        ("sparsity_factor", 3),
        ("num_global_tokens", 0),
        ("num_global_tokens", 513),
        ("block_size", -16),
        ("sparse_block_size", -1),
        ("sparsity_factor", 0),
    ],
)
def test_invalid_settings_name_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"`{field}`={value!r}"):
        LSGBartConfig(**{field: value})


def test_default_config_is_valid_and_maps_every_auto_class():
    config = LSGBartConfig()
    assert (config.block_size, config.sparse_block_size, config.sparsity_factor) == (128, 128, 2)
    assert config.model_type == "lsg_bart" and config.sparsity_type == "norm"
    assert set(config.auto_map) == {
        "AutoConfig",
        "AutoModel",
        "AutoModelForCausalLM",
        "AutoModelForQuestionAnswering",
        "AutoModelForSeq2SeqLM",
        "AutoModelForSequenceClassification",
    }


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_every_sparsity_type_runs_forward_and_backward(sparsity_type, length):
    config = tiny_config(sparsity_type=sparsity_type, lsh_seed=0)
    model = LSGBartForConditionalGeneration(config).train()
    input_ids, attention_mask = padded_batch([length, length - 9])
    labels = input_ids[:, :12].clone()
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    assert out.encoder_last_hidden_state.shape == (2, length + config.num_global_tokens, config.d_model)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    # Without dropout, the gradients equal those of the written-out `reference` kernel with the same weights (and
    # the same LSH rotations); the global tokens' rows get gradients, the table's unused rows none.
    reference = LSGBartForConditionalGeneration(tiny_config(sparsity_type=sparsity_type, lsh_seed=0,
                                                            lsg_kernel="reference"))
    reference.load_state_dict(model.state_dict())
    grads = []
    for candidate in (model.eval(), reference.eval()):
        candidate.zero_grad()
        candidate(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
        encoder = candidate.model.encoder
        grads.append((encoder.layers[0].self_attn.q_proj.weight.grad, encoder.global_embeddings.weight.grad))
    (q_grad, global_grad), (q_expected, global_expected) = grads
    for grad, expected in ((q_grad, q_expected), (global_grad, global_expected)):  # tiny values: relative L2
        assert expected.norm() > 0 and (grad - expected).norm() / expected.norm() < 1e-4  # seen: < 1e-6
    assert (global_grad[: config.num_global_tokens].abs().sum(-1) > 0).all()
    assert not global_grad[config.num_global_tokens :].any()


def test_caller_mask_is_not_modified_even_with_mask_first_token():
    model = LSGBartModel(tiny_config(mask_first_token=True)).eval()
    input_ids, attention_mask = padded_batch([150, 120])
    before = attention_mask.clone()
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
    assert torch.equal(attention_mask, before)


@pytest.mark.parametrize("sparsity_type", ["none", "norm", "pooling", "stride", "block_stride"])
def test_padding_does_not_change_real_tokens(sparsity_type):
    model = LSGBartModel(tiny_config(sparsity_type=sparsity_type)).eval()
    input_ids, attention_mask = padded_batch([300, 200])
    with torch.no_grad():
        batched = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        alone = model.encoder(input_ids=input_ids[1:, :200]).last_hidden_state
    torch.testing.assert_close(batched[1, : 200 + 2], alone[0], atol=1e-5, rtol=1e-5)


def test_inputs_embeds_match_input_ids():
    model = LSGBartForConditionalGeneration(tiny_config()).eval()
    input_ids, attention_mask = padded_batch([320, 250])
    decoder_input_ids = input_ids[:, :7]
    with torch.no_grad():
        from_ids = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        embeds = model.get_input_embeddings()(input_ids)
        from_embeds = model(inputs_embeds=embeds, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(from_embeds.logits, from_ids.logits)


def test_global_tokens_dropped_before_decoder():
    config = tiny_config(pass_global_tokens_to_decoder=False)
    model = LSGBartModel(config).eval()
    input_ids, attention_mask = padded_batch([150, 120])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :5])
    assert out.encoder_last_hidden_state.shape == (2, 150, config.d_model)


def test_hidden_states_and_tuple_outputs():
    config = tiny_config()
    model = LSGBartForConditionalGeneration(config).eval()
    input_ids, attention_mask = padded_batch([150, 120])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        as_tuple = model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)
    assert len(out.encoder_hidden_states) == config.encoder_layers + 1
    assert len(out.decoder_hidden_states) == config.decoder_layers + 1
    torch.testing.assert_close(out.encoder_hidden_states[-1], out.encoder_last_hidden_state)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_activation_checkpointing_gives_the_same_gradients():
    config = tiny_config(dropout=0.0, attention_dropout=0.0)
    input_ids, attention_mask = padded_batch([300, 260])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = LSGBartForConditionalGeneration(config).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.model.encoder.gradient_checkpointing
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids[:, :10].contiguous()).loss
        loss.backward()
        grads.append(model.model.encoder.layers[0].self_attn.k_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_dropout_is_active_in_training_only():
    model = LSGBartModel(tiny_config(dropout=0.3, attention_dropout=0.3))
    input_ids, attention_mask = padded_batch([200, 150])
    model.train()
    a, b = (model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state for _ in range(2))
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        c, d = (model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state for _ in range(2))
    assert torch.equal(c, d)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sparsity_type", SPARSITY_TYPES)
def test_half_precision_forward_is_finite_on_padded_batches(dtype, sparsity_type):
    model = LSGBartForConditionalGeneration(tiny_config(sparsity_type=sparsity_type, lsh_seed=0)).eval()
    input_ids, attention_mask = padded_batch([300, 170])
    with torch.no_grad():
        reference = model(input_ids=input_ids, attention_mask=attention_mask).encoder_last_hidden_state
        out = model.to(dtype)(input_ids=input_ids, attention_mask=attention_mask)
    assert out.logits.dtype == dtype
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.encoder_last_hidden_state).all()
    real = torch.cat([torch.ones(2, 2, dtype=torch.bool), attention_mask.bool()], dim=1)
    error = (out.encoder_last_hidden_state.float() - reference)[real].abs().max()
    assert error < 0.1, error


def test_generate_on_a_long_input_greedy_beam_and_cache():
    config = tiny_config(max_position_embeddings=4160, block_size=64, sparse_block_size=64, dropout=0.0)
    model = LSGBartForConditionalGeneration(config).eval()
    input_ids, attention_mask = padded_batch([4100, 4000])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=6, min_new_tokens=6)
    with torch.no_grad():
        cached = model.generate(**kwargs, do_sample=False, num_beams=1, use_cache=True)
        uncached = model.generate(**kwargs, do_sample=False, num_beams=1, use_cache=False)
        beams = model.generate(**kwargs, do_sample=False, num_beams=3, num_return_sequences=2)
    assert torch.equal(cached, uncached)
    assert cached.shape[0] == 2 and cached.shape[1] >= 7
    assert beams.shape[0] == 4


def test_every_head_runs():
    config = tiny_config()
    input_ids, attention_mask = padded_batch([150, 120])
    with torch.no_grad():
        classifier = LSGBartForSequenceClassification(tiny_config(num_labels=3)).eval()
        assert classifier(input_ids=input_ids, attention_mask=attention_mask).logits.shape == (2, 3)
        qa = LSGBartForQuestionAnswering(config).eval()
        spans = qa(input_ids=input_ids, attention_mask=attention_mask)
        assert spans.start_logits.shape == spans.end_logits.shape == (2, 150)
        causal = LSGBartForCausalLM(tiny_config()).eval()
        assert causal(input_ids=input_ids[:, :20]).logits.shape == (2, 20, config.vocab_size)


def test_causal_lm_loads_the_decoder_of_a_seq2seq_checkpoint(tmp_path):
    seq2seq = LSGBartForConditionalGeneration(tiny_config()).eval()
    seq2seq.save_pretrained(tmp_path / "seq2seq")
    causal, info = LSGBartForCausalLM.from_pretrained(tmp_path / "seq2seq", output_loading_info=True)
    assert not info["missing_keys"], info["missing_keys"]
    assert torch.equal(causal.model.decoder.embed_tokens.weight, seq2seq.model.shared.weight)
    assert torch.equal(causal.lm_head.weight, seq2seq.lm_head.weight)
    causal.save_pretrained(tmp_path / "causal")
    reloaded = LSGBartForCausalLM.from_pretrained(tmp_path / "causal")
    input_ids = torch.randint(5, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(input_ids=input_ids).logits, causal.eval()(input_ids=input_ids).logits)


def test_generation_runs_to_the_last_decoder_position_and_no_further():
    # Sequences may be one token longer than the position table: the last token is generated, never fed back.
    config = tiny_config(max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)
    input_ids = torch.randint(5, 100, (1, 10))
    seq2seq = LSGBartForConditionalGeneration(config).eval()
    causal = LSGBartForCausalLM(tiny_config(max_position_embeddings=64)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the cache argument under its current name
        with torch.no_grad():
            assert seq2seq.generate(input_ids, max_new_tokens=64, min_new_tokens=64).shape == (1, 65)
            assert causal.generate(input_ids, max_new_tokens=55, min_new_tokens=55).shape == (1, 65)
    with pytest.raises(ValueError, match="ask for at most 64 new tokens"):
        seq2seq.generate(input_ids, max_new_tokens=65)
    with pytest.raises(ValueError, match="ask for at most 55 new tokens"):
        causal.generate(input_ids, max_new_tokens=56)
    # A cached decoder step past the positions is refused too, naming the cache.
    with torch.no_grad():
        step = causal(input_ids=torch.randint(5, 100, (1, 64)), use_cache=True)
        cache = step[1] if isinstance(step, tuple) else step.past_key_values
        with pytest.raises(ValueError, match="`input_ids` has 1 tokens after 64 cached tokens"):
            causal(input_ids=input_ids[:, :1], **{CACHE_ARGUMENT: cache}, use_cache=True)


def test_input_longer_than_positions_or_unaligned_without_adaptive_is_refused():
    model = LSGBartModel(tiny_config(max_position_embeddings=256)).eval()
    with pytest.raises(ValueError, match="max_position_embeddings=256"):
        model.encoder(input_ids=torch.ones(1, 300, dtype=torch.long))
    model = LSGBartModel(tiny_config(adaptive=False)).eval()
    with pytest.raises(ValueError, match="not a multiple of block_size=16"):
        model.encoder(input_ids=torch.ones(1, 150, dtype=torch.long))


def test_shipped_default_config_is_lsg_bart_base_4096():
    from conftest import REPO

    config = LSGBartConfig.from_pretrained(REPO)
    assert (config.d_model, config.encoder_layers, config.encoder_attention_heads, config.vocab_size) == (768, 6, 12, 50265)
    assert config.max_position_embeddings == 4096
    assert (config.block_size, config.sparse_block_size, config.sparsity_factor) == (128, 128, 2)
    assert config.sparsity_type == "norm" and config.num_global_tokens == 1
    assert json.loads((REPO / "config.json").read_text())["auto_map"] == config.auto_map
