"""The decoder layer of LSG-BART and its cross-attention, which keeps one set of keys and values per input, shared
by its beams.

Shapes: n inputs, g decoder rows per input (beams, returned sequences), q decoder positions, S encoder positions,
h heads, d head dim.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from transformers.models.bart.modeling_bart import BartAttention, BartDecoderLayer

from .compat import (
    accepted_kwargs,
    attention_result,
    decoder_layer_arguments,
    decoder_layer_result,
    dynamic_self_attention_cache,
    self_attention_arguments,
)
from .configuration_lsg_bart import LSGBartConfig
from .cpu_linear import project


def decoder_attention_settings(config, **optional):
    """`BartAttention`'s arguments for a decoder attention of `config`, with those of `optional` (`is_causal`,
    `layer_idx`) that this transformers accepts."""
    return dict(
        embed_dim=config.d_model,
        num_heads=config.decoder_attention_heads,
        dropout=config.attention_dropout,
        is_decoder=True,
        config=config,
        **accepted_kwargs(BartAttention.__init__, **optional),
    )


class LSGBartDecoderLayer(BartDecoderLayer):
    """BART's decoder layer, with the same weights, arguments and outputs, whose cross-attention is
    [`LSGBartCrossAttention`], whose self-attention is [`LSGBartDecoderSelfAttention`] (where BART's is one class
    for every attention implementation, from transformers 4.5x on), and whose feed-forward products go through
    `cpu_linear.project`: on CPU a decoding step's few rows then stream each weight once, where `nn.Linear` reads
    it about half as fast.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: Optional[int] = None):
        super().__init__(config, **accepted_kwargs(BartDecoderLayer.__init__, layer_idx=layer_idx))
        if type(self.self_attn) is BartAttention:  # before 4.5x, one class per attention implementation: kept
            self.self_attn = LSGBartDecoderSelfAttention(config, layer_idx)
        self.encoder_attn = LSGBartCrossAttention(config, layer_idx)

    def forward(self, hidden_states, *args, **kwargs):
        """hidden_states (n*g, q, d_model), then BART's decoder-layer arguments of this transformers version."""
        arguments = decoder_layer_arguments(self, args, kwargs)
        self_attention_output = self.self_attn(hidden_states=hidden_states, **self_attention_arguments(arguments))
        hidden_states = self.self_attn_layer_norm(hidden_states + self.dropped_out(self_attention_output[0]))

        cross_attention_weights = None
        if arguments.get("encoder_hidden_states") is not None:
            attended, cross_attention_weights, *_ = self.encoder_attn(
                hidden_states,
                key_value_states=arguments["encoder_hidden_states"],
                attention_mask=arguments.get("encoder_attention_mask"),
                layer_head_mask=arguments.get("cross_attn_layer_head_mask"),
                output_attentions=arguments.get("output_attentions"),
            )
            hidden_states = self.encoder_attn_layer_norm(hidden_states + self.dropped_out(attended))

        activated = self.activation_fn(project(self.fc1, hidden_states))  # (n*g, q, ffn)
        activated = F.dropout(activated, p=self.activation_dropout, training=self.training)
        fed_forward = project(self.fc2, activated)  # (n*g, q, d_model)
        hidden_states = self.final_layer_norm(hidden_states + self.dropped_out(fed_forward))
        return decoder_layer_result(hidden_states, self_attention_output, cross_attention_weights, arguments)

    def dropped_out(self, x):
        return F.dropout(x, p=self.dropout, training=self.training)


class LSGBartDecoderSelfAttention(BartAttention):
    """BART's decoder self-attention, with the same weights, arguments and outputs. A decoding step on CPU at
    inference (one new position per row, a dynamic cache, no attention weights or head mask asked) runs its four
    products through `cpu_linear.project`, then attends over the cache with SDPA; anything else, training and
    prompts included, is BART's own forward pass.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: Optional[int] = None):
        super().__init__(**decoder_attention_settings(config, is_causal=True, layer_idx=layer_idx))

    def forward(self, hidden_states, *args, **kwargs):
        cache = dynamic_self_attention_cache(kwargs)
        mask = kwargs.get("attention_mask")  # None, or (n*g, 1, 1, cached + 1): bool or additive
        if (
            args
            or cache is None
            or self.training
            or hidden_states.device.type != "cpu"
            or hidden_states.shape[1] != 1
            or kwargs.get("output_attentions")
            or kwargs.get("layer_head_mask") is not None
            or not (mask is None or (type(mask) is torch.Tensor and mask.dim() == 4 and mask.shape[-2] == 1))
        ):
            return super().forward(hidden_states, *args, **kwargs)
        n_g, q, _ = hidden_states.shape
        h, d = self.num_heads, self.head_dim

        def heads(layer):  # (n*g, 1, h*d) -> (n*g, h, 1, d)
            return project(layer, hidden_states).view(n_g, q, h, d).transpose(1, 2)

        key, value = cache.update(heads(self.k_proj), heads(self.v_proj), self.layer_idx)  # (n*g, h, cached + 1, d)
        out = F.scaled_dot_product_attention(heads(self.q_proj), key, value, attn_mask=mask, scale=self.scaling)
        return project(self.out_proj, out.transpose(1, 2).reshape(n_g, q, h * d)), None


class LSGBartCrossAttention(BartAttention):
    """BART's decoder cross-attention (same weights) for encoder outputs that are not repeated per beam.

    `generate` keeps one encoder output per input (see `LSGBartForConditionalGeneration`), while the decoder runs
    `g` rows per input (beams, returned sequences), next to each other. The queries of an input's `g` rows attend
    together to its keys and values. `generate` projects those once, before the first decoding step
    (`encoder_keys_values`), so that a decoding step reads them and has nothing to decide: no copy per beam,
    nothing for beam search to reorder, and no graph break under torch.compile; the keys are kept transposed, so
    that a step's two products each stream one contiguous stretch per head. Attention weights, one (h, q, S) block
    per decoder row, are written out and returned when `output_attentions=True` is passed down or under
    `attn_implementation="eager"` (as BART's eager attention does); outside decoding, the fused kernel runs.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: Optional[int] = None):
        super().__init__(**decoder_attention_settings(config, layer_idx=layer_idx))
        # The running `generate` call's keys, transposed (n, h, d, S), and values (n, h, S, d), both contiguous (see
        # `keys_and_values_for_decoding`); None outside `generate`.
        self.encoder_keys_values = None

    def forward(self, hidden_states, key_value_states=None, attention_mask=None, layer_head_mask=None, **kwargs):
        if layer_head_mask is not None:
            raise ValueError("LSG-BART: head masks are not supported (transformers 5 removed them too).")
        n_g, q, _ = hidden_states.shape
        n, S, _ = key_value_states.shape
        h, d = self.num_heads, self.head_dim
        if n_g % n:
            raise ValueError(f"LSG-BART cross-attention: {n_g} decoder rows for {n} encoder outputs.")
        g = n_g // n
        if self.encoder_keys_values is not None:
            key_t, value = self.encoder_keys_values  # (n, h, d, S), (n, h, S, d)
        else:
            key, value = self.keys_and_values(key_value_states)  # (n, h, S, d) each
            key_t = key.transpose(-1, -2)  # (n, h, d, S), a view
        query = project(self.q_proj, hidden_states)  # (n*g, q, h*d)
        query = query.view(n, g * q, h, d).transpose(1, 2)  # (n, h, g*q, d): an input's rows together
        if attention_mask is not None:  # (n*g | n, 1, q|1, S), the same for every row of an input
            rows = 1 if attention_mask.shape[0] == n else g  # transformers 5 builds it from the encoder output
            attention_mask = attention_mask[::rows, :, :1]  # (n, 1, 1, S)
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        written_out = kwargs.get("output_attentions") or self.config._attn_implementation == "eager"
        if written_out or self.encoder_keys_values is not None:
            # Written out: as BART's eager attention does, so that the weights can be returned; and while decoding,
            # where a few query rows meet all S keys, two products over keys stored transposed read them faster
            # than the fused kernel does.
            scores = (query * self.scaling) @ key_t  # (n, h, g*q, S)
            if attention_mask is not None and attention_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            elif attention_mask is not None:
                scores = scores + attention_mask  # additive
            probs = scores.softmax(dim=-1)
            out = F.dropout(probs, p=dropout_p, training=self.training) @ value  # (n, h, g*q, d)
            if written_out:
                weights = probs.view(n, h, g, q, S).transpose(1, 2).reshape(n_g, h, q, S)  # per decoder row
        else:
            out = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout_p, scale=self.scaling
            )  # (n, h, g*q, d)
        out = out.transpose(1, 2).reshape(n_g, q, h * d)
        return attention_result(project(self.out_proj, out), weights)

    def keys_and_values_for_decoding(self, encoder_output):
        """The keys, transposed (n, h, d, S), and the values (n, h, S, d) of `encoder_output`, each contiguous: what
        every decoding step of one `generate` call reads (each head's keys and values in one stretch of memory)."""
        key, value = self.keys_and_values(encoder_output)
        return key.transpose(-1, -2).contiguous(), value.contiguous()

    def keys_and_values(self, encoder_output):
        """The keys and values of `encoder_output` (n, S, d_model), each (n, h, S, d)."""
        n, S, _ = encoder_output.shape
        return tuple(
            project(layer, encoder_output).view(n, S, self.num_heads, self.head_dim).transpose(1, 2)
            for layer in (self.k_proj, self.v_proj)
        )  # (n, h, S, d)
