"""PyTorch LSG-BART: BART whose encoder self-attention is Local + Sparse + Global (LSG) attention.

This file holds the BART-shaped layers, the encoder, the models with their heads and the Auto-class registration.
An encoder layer's forward pass reads: `LSGSelfAttention` projects the queries, keys and values (`cpu_linear.py`)
and calls `lsg_attention` (`lsg_attention.py`: build blocks, pick sparse tokens), which calls the `Kernel` that the
encoder chose once for the forward pass (`lsg_kernels.py`); the feed-forward block follows here. The decoder's
layer and cross-attention are in `decoder.py`, the summarization pipeline in `pipeline_lsg_bart.py`, and what differs
between Python, torch and transformers versions in `compat.py`.

Shapes: n batch, h heads, T tokens with the global ones, t tokens without them, d head dim, G global tokens.
"""

import functools
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput
from transformers.utils import logging
from transformers.models.bart.modeling_bart import (
    BartAttention,
    BartClassificationHead,
    BartDecoder,
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
    shift_tokens_right,
)

from .configuration_lsg_bart import LSGBartConfig
from .cpu_linear import dropout, feed_forward, is_plain_linear, linear, project
from .decoder import LSGBartDecoderLayer
from .lsg_attention import AttentionInputs, AttentionSettings, chunk_starts, lsg_attention
from .lsg_kernels import choose_kernel
from .lsg_settings import MAX_GLOBAL_TOKENS
# Not used here: `save_pretrained` copies the files that this one imports (older transformers load only those),
# and configs name this pipeline.
from .pipeline_lsg_bart import LSGBartSummarizationPipeline  # noqa: F401
from .compat import (
    CACHE_ARGUMENT,
    accepted_kwargs,
    autocast_enabled,
    cached_length,
    call_layer,
    can_return_tuple,
    output_requested,
    read_shared_embeddings_as_decoder_embeddings,
    return_dict_requested,
    tracing,
)

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Encoder self-attention
# ---------------------------------------------------------------------------------------------------------------


class LSGSelfAttention(BartAttention):
    """BART self-attention of the encoder computed with LSG attention (same projections and weights).

    Called with the (n, T) boolean mask of visible keys, global tokens included, and the `Kernel` that the encoder
    chose for the forward pass (`lsg_kernels.choose_kernel`).
    """

    def __init__(self, config: LSGBartConfig, layer_idx: Optional[int] = None):
        super().__init__(
            embed_dim=config.d_model,
            num_heads=config.encoder_attention_heads,
            dropout=config.attention_dropout,
            config=config,
            **accepted_kwargs(BartAttention.__init__, layer_idx=layer_idx),
        )
        self.layer_idx = layer_idx

    def forward(self, hidden_states, attention_mask, kernel, **kwargs):
        n, T, _ = hidden_states.shape
        # The LSG settings are read from the config on every call, so that a change made after loading (checked
        # by the config when it is set) takes effect.
        config = self.config
        # Keys and values get a block of margin around the non-global tokens, so that every local window is a
        # view of them; short inputs (full attention) have no windows and need none.
        G, bs = config.num_global_tokens, config.block_size
        margin, after = (max(bs - G, 0), bs) if T > 2 * bs + G else (0, 0)
        query, key, value = self.project_into_heads(hidden_states, margin, after, kernel.token_chunk)
        inputs = AttentionInputs(query, key, value, attention_mask.view(n, 1, T, 1), margin)
        dropout_p = self.dropout if self.training else 0.0
        out = lsg_attention(inputs, AttentionSettings(config, kernel, self.scaling, dropout_p, self.layer_idx))
        return project(self.out_proj, out.reshape(n, T, self.embed_dim)), None  # (n, T, d_model)

    def project_into_heads(self, hidden_states, margin, after, token_chunk):
        """Queries (n, h, T, d), and keys and values (n, h, margin + T + after, d) with zeros around the T tokens.

        With a `token_chunk` (CPU) the projection runs that many tokens at a time: the joint projection of a whole
        long input would be a tensor of tens of MB, which glibc maps afresh on every allocation, and touching its
        new pages is a sizeable share of the product's time.
        """
        n, T, _ = hidden_states.shape
        h, d = self.num_heads, self.head_dim
        query = hidden_states.new_empty(n, h, T, d)
        key, value = (hidden_states.new_empty(n, h, margin + T + after, d) for _ in range(2))
        for buffer in (key, value):
            buffer[:, :, :margin] = 0
            buffer[:, :, margin + T :] = 0
        project_qkv = self.qkv_projection()
        for start in chunk_starts(T, token_chunk):
            parts = project_qkv(hidden_states[:, start : start + (token_chunk or T)])  # 3 x (n, c, h*d)
            c = parts[0].shape[1]
            for buffer, offset, part in zip((query, key, value), (start, margin + start, margin + start), parts):
                buffer[:, :, offset : offset + c] = part.view(n, c, h, d).transpose(1, 2)
        return query, key, value

    def qkv_projection(self):
        """A function from hidden states (n, c, h*d) to their queries, keys and values, each (n, c, h*d): one
        matrix product with the three layers' weights joined (once per call of this method) when they are plain."""
        layers = (self.q_proj, self.k_proj, self.v_proj)
        if not all(is_plain_linear(layer) for layer in layers):
            return lambda x: tuple(layer(x) for layer in layers)
        weight = torch.cat([layer.weight for layer in layers])  # (3*h*d, h*d)
        bias = torch.cat([layer.bias for layer in layers]) if all(layer.bias is not None for layer in layers) else None
        return lambda x: linear(x, weight, bias).split(self.embed_dim, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------------------


class LSGBartEncoderLayer(BartEncoderLayer):
    """A BART encoder layer whose self-attention is [`LSGSelfAttention`].

    Same computation as BART's layer. What follows the attention works token by token, so on CPU it runs on
    chunks of the kernel's `token_chunk` tokens: the feed-forward block's 4x-wide intermediate then stays in cache,
    and its memory does not grow with the input length.
    """

    def __init__(self, config: LSGBartConfig, layer_idx: Optional[int] = None):
        super().__init__(config, **accepted_kwargs(BartEncoderLayer.__init__, layer_idx=layer_idx))
        self.self_attn = LSGSelfAttention(config, layer_idx)
        self.exact_gelu = config.activation_function == "gelu"

    def forward(self, hidden_states, attention_mask, kernel, **kwargs):
        """hidden_states (n, T, d_model), attention_mask (n, T) bool, and the encoder's `Kernel`."""
        attended, _ = self.self_attn(hidden_states, attention_mask, kernel)  # (n, T, d_model)
        if kernel.token_chunk:
            chunk = kernel.token_chunk
            pairs = zip(hidden_states.split(chunk, dim=1), attended.split(chunk, dim=1))
            hidden_states = torch.cat([self.after_attention(*pair, kernel) for pair in pairs], dim=1)  # (n, T, d_model)
        else:
            hidden_states = self.after_attention(hidden_states, attended, kernel)
        if hidden_states.dtype == torch.float16 and not torch.isfinite(hidden_states).all():
            clamp_value = torch.finfo(hidden_states.dtype).max - 1000
            hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
        return hidden_states

    def after_attention(self, hidden_states, attended, kernel):
        """Residual and layer norm, then BART's feed-forward block: (n, chunk, d_model) -> (n, chunk, d_model)."""
        attended = dropout(attended, self.dropout, self.training)
        hidden_states = self.self_attn_layer_norm(hidden_states + attended)
        recompute = torch.is_grad_enabled() and kernel.cpu_tuned
        fed_forward = feed_forward(self, hidden_states, self.exact_gelu, recompute)
        fed_forward = dropout(fed_forward, self.dropout, self.training)
        return self.final_layer_norm(hidden_states + fed_forward)


def check_labels(labels, config):
    """`ValueError` for labels of another dtype or shape, outside the vocabulary (but -100, which the loss ignores),
    or longer than the decoder's positions."""
    where = "LSG-BART"
    if labels.dim() != 2 or labels.shape[1] == 0:
        raise ValueError(f"{where}: `labels` has shape {tuple(labels.shape)}; expected (batch_size, target_length).")
    check_token_ids(where, "labels", labels, config.vocab_size, ignored=-100)
    check_decoder_length(where, "labels", labels.shape[1], None, config)


class LSGBartPreTrainedModel(BartPreTrainedModel):
    """Base class of the LSG-BART models: weight initialisation and loading of LSG checkpoints."""

    config_class = LSGBartConfig
    base_model_prefix = "model"
    _no_split_modules = [r"LSGBartEncoderLayer", r"LSGBartDecoderLayer"]
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
        self.config.check_lsg_settings()  # also the settings given to `from_pretrained`, set one by one
        super().post_init()

    def resize_position_embeddings(self, new_num_position_embeddings):
        """Not done in place: a longer LSG-BART needs a position table that is a multiple of the block size, which
        the converter writes as a new checkpoint (position tables tiled, global embeddings kept)."""
        block_size = self.config.block_size
        length = -(-int(new_num_position_embeddings) // block_size) * block_size
        raise NotImplementedError(
            f"{type(self).__name__} has max_position_embeddings={self.config.max_position_embeddings}; for "
            f"{new_num_position_embeddings} positions, convert it to a longer checkpoint: `lsg-bart-convert "
            f"--initial_model {self.config._name_or_path or 'CHECKPOINT'} --model_name LONGER --resize_lsg "
            f"--max_sequence_length {length}` (a multiple of block_size={block_size}), then load LONGER."
        )

    def _prepare_generated_length(self, generation_config, *args, **kwargs):
        """`generate`'s length settings, resolved as usual, then held to the decoder's positions: a length the user
        asked for (`max_new_tokens`, `max_length`) that needs more is refused before any work; a default one is
        lowered to what fits."""
        generation_config = super()._prepare_generated_length(generation_config, *args, **kwargs)
        # The last token is generated, never fed back: sequences can be one token longer than the position table.
        longest = self.config.max_position_embeddings + 1
        if generation_config.max_length is None or generation_config.max_length <= longest:
            return generation_config
        asked = generation_config.max_new_tokens
        prompt = generation_config.max_length - asked if asked is not None else None
        if asked is not None:
            raise ValueError(
                f"LSG-BART generate: `max_new_tokens`={asked} after {prompt} decoder token(s) needs "
                f"{generation_config.max_length - 1} decoder positions, but the model has max_position_embeddings="
                f"{self.config.max_position_embeddings}; ask for at most {longest - prompt} new tokens."
            )
        if not kwargs.get("has_default_max_length", False):
            raise ValueError(
                f"LSG-BART generate: `max_length`={generation_config.max_length} needs more decoder positions than "
                f"the model's max_position_embeddings={self.config.max_position_embeddings}; use at most {longest}."
            )
        generation_config.max_length = longest
        return generation_config


TOKEN_ID_DTYPES = (torch.long, torch.int)  # what the embeddings take


def check_token_ids(where, name, ids, vocab_size, ignored=None):
    """`ValueError` for token ids of a dtype the embeddings do not take, or outside the vocabulary (`ignored` is a
    value allowed besides, e.g. the -100 of labels). The range check reads the ids: eager mode only."""
    if ids.dtype not in TOKEN_ID_DTYPES:
        raise ValueError(f"{where}: `{name}` has dtype {ids.dtype}; token ids must be torch.long or torch.int32.")
    if not ids.numel() or tracing():
        return
    outside = (ids < 0) | (ids >= vocab_size)
    if ignored is not None:
        outside &= ids != ignored
    if outside.any():
        bad = ids[outside][0].item()
        allowed = f"0 to {vocab_size - 1}" + (f", or {ignored}" if ignored is not None else "")
        raise ValueError(
            f"{where}: `{name}` holds token id {bad}, outside the vocabulary ({allowed}); was it made with another "
            "tokenizer?"
        )


def check_embeddings(where, name, embeddings, width, dtype):
    """`ValueError` for embeddings (n, length, width) of another width, or of another dtype than the model's weights
    (outside autocast)."""
    if embeddings.shape[-1] != width:
        raise ValueError(
            f"{where}: `{name}` has shape {tuple(embeddings.shape)}; its last dimension must be d_model={width}."
        )
    if embeddings.dtype != dtype and not autocast_enabled(embeddings.device.type):
        raise ValueError(
            f"{where}: `{name}` has dtype {embeddings.dtype} but the model's weights are {dtype}; pass "
            f"`{name}.to({dtype})`."
        )


def check_sequence_inputs(where, ids_and_embeddings, attention_mask, config, dtype):
    """`ValueError` for inputs that would otherwise fail deep inside or silently give wrong results: not exactly one
    of the ids and the embeddings (`ids_and_embeddings`: ((name, tensor or None), (name, tensor or None))), a shape
    other than (batch_size, sequence_length[, d_model]), an empty batch or sequence, a mask of another shape, token
    ids of another dtype or outside the vocabulary, embeddings of another width or dtype."""
    (ids_name, ids), (embeddings_name, embeddings) = ids_and_embeddings
    if (ids is None) == (embeddings is None):
        raise ValueError(f"{where}: give exactly one of `{ids_name}` and `{embeddings_name}`.")
    given, name = (ids, ids_name) if ids is not None else (embeddings, embeddings_name)
    if given.dim() != (2 if ids is not None else 3):
        expected = "(batch_size, sequence_length)" if ids is not None else "(batch_size, sequence_length, d_model)"
        raise ValueError(f"{where}: `{name}` has shape {tuple(given.shape)}; expected {expected}.")
    if given.shape[0] == 0 or given.shape[1] == 0:
        raise ValueError(
            f"{where}: `{name}` is empty (shape {tuple(given.shape)}); give at least one sequence of one token."
        )
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(given.shape[:2]):
        raise ValueError(
            f"{where}: `attention_mask` has shape {tuple(attention_mask.shape)} but `{name}` has shape "
            f"{tuple(given.shape)}; the mask must be (batch_size, sequence_length) = {tuple(given.shape[:2])}."
        )
    if ids is not None:
        check_token_ids(where, ids_name, ids, config.vocab_size)
    else:
        check_embeddings(where, embeddings_name, embeddings, config.d_model, dtype)


def check_decoder_length(where, name, length, past_key_values, config):
    """`ValueError` when `length` new decoder tokens after those in the cache need more positions than the decoder
    has (BART's position table would fail with a bare `IndexError`)."""
    past = cached_length(past_key_values)
    if past + length > config.max_position_embeddings:
        after = f" after {past} cached tokens" if past else ""
        raise ValueError(
            f"{where}: `{name}` has {length} tokens{after}, more than the decoder's max_position_embeddings="
            f"{config.max_position_embeddings} positions; shorten it (or the generation)."
        )


def check_decoder_inputs(where, names, ids, embeddings, past_key_values, config, dtype):
    """The decoder's ids or embeddings, when given: `check_sequence_inputs`' checks (but the mask), then the length
    against the decoder's positions. `names` are the arguments' names for this model (ids, embeddings)."""
    if ids is None and embeddings is None:
        return
    check_sequence_inputs(where, tuple(zip(names, (ids, embeddings))), None, config, dtype)
    given, name = (ids, names[0]) if ids is not None else (embeddings, names[1])
    check_decoder_length(where, name, given.shape[1], past_key_values, config)


class LSGBartEncoder(LSGBartPreTrainedModel, BartEncoder):
    """BART encoder with LSG self-attention and `num_global_tokens` learned global tokens.

    Inputs longer than `2 * block_size` are padded to a multiple of `block_size` (`adaptive=True`); the output
    is cropped back, with the global tokens first when `pass_global_tokens_to_decoder` is set.
    """

    def __init__(self, config: LSGBartConfig):
        PreTrainedModel.__init__(self, config)  # BART's __init__ would build sub-modules that this one replaces
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
        if length <= 2 * bs:
            return 0
        if not self.config.adaptive and length % bs:
            raise ValueError(
                f"Input length {length} is not a multiple of block_size={bs}; pad it to a multiple of {bs} "
                "or use a config with adaptive=True."
            )
        return (length + bs - 1) // bs * bs - length

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
            Accepted for compatibility: LSG attention computes no attention matrix, so `attentions` is `None` (with
            one warning).
        return_dict (`bool`, *optional*):
            Return a [`BaseModelOutput`] (the default) or a tuple.
        """
        config = self.config
        config.check_lsg_settings()  # settings changed after loading take effect here, checked together
        device, dtype = self.embed_positions.weight.device, self.embed_positions.weight.dtype
        ids_and_embeddings = (("input_ids", input_ids), ("inputs_embeds", inputs_embeds))
        check_sequence_inputs("LSG-BART encoder", ids_and_embeddings, attention_mask, config, dtype)
        n, t = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]

        visible = torch.ones(n, t, dtype=torch.bool, device=device)
        if attention_mask is not None:
            visible = attention_mask.to(device=device, dtype=torch.bool)  # a new tensor: the caller's is untouched
        if config.mask_first_token:
            visible = torch.cat([torch.zeros_like(visible[:, :1]), visible[:, 1:]], dim=1)

        pad = self.padding_length(t)
        padded_length = t + pad
        if padded_length > config.max_position_embeddings:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(
                f"LSG-BART encoder: `{name}` has {t} tokens (padded to {padded_length}), more than "
                f"max_position_embeddings={config.max_position_embeddings}; truncate the input, or convert the model "
                "to a longer length with `lsg-bart-convert --max_sequence_length`."
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
        attention_dropout = max((layer.self_attn.dropout for layer in self.layers), default=0.0)
        kernel = choose_kernel(
            config.lsg_kernel,
            hidden_states,
            attention_dropout if self.training else 0.0,
            eager_attention=config._attn_implementation == "eager",
        )
        visible = F.pad(visible, (G, 0), value=True)  # (n, T)

        if output_requested(config, kwargs, "output_attentions"):
            logger.warning_once(
                "LSG-BART: the encoder's LSG attention computes no attention matrix, so encoder attentions are None; "
                "the decoder's cross-attention weights are returned, and its self-attention weights under "
                "attn_implementation='eager'."
            )
        keep_hidden_states = output_requested(config, kwargs, "output_hidden_states")
        layer_inputs = []
        for layer in self.layers:
            if keep_hidden_states:
                layer_inputs.append(hidden_states)
            if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
                continue
            hidden_states = call_layer(self, layer, hidden_states, visible, kernel)

        # The adaptive padding is cropped with `index_select`, not a slice: in an exported graph, where the length is
        # symbolic, a slice makes torch.export decide whether the result is contiguous, which holds only at
        # multiples of the block size, and the program would be restricted to those.
        if config.pass_global_tokens_to_decoder:
            kept = torch.arange(G + t, device=hidden_states.device)
        else:
            if config.pool_with_global:
                first = hidden_states[:, :1]  # global token 0
                hidden_states = torch.cat([hidden_states[:, :G], first, hidden_states[:, G + 1 :]], dim=1)
            kept = torch.arange(G, G + t, device=hidden_states.device)
        hidden_states = hidden_states.index_select(1, kept)  # (n, G + t | t, d_model)
        all_hidden_states = (*layer_inputs, hidden_states) if keep_hidden_states else None
        output = BaseModelOutput(last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=None)
        return output if return_dict_requested(config, kwargs) else output.to_tuple()


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------


class LSGBartModel(LSGBartPreTrainedModel, BartModel):
    """The bare LSG-BART encoder-decoder, outputting the decoder's hidden states."""

    def __init__(self, config: LSGBartConfig):
        PreTrainedModel.__init__(self, config)  # BART's __init__ would build sub-modules that this one replaces
        embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0
        self.shared = BartScaledWordEmbedding(config.vocab_size, config.d_model, config.pad_token_id, embed_scale)
        self.encoder = LSGBartEncoder(config)
        self.decoder = BartDecoder(config)
        self.decoder.layers = nn.ModuleList([LSGBartDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.post_init()

    def set_encoder_output_for_decoding(self, encoder_output):
        """Give each cross-attention layer the keys and values of `encoder_output` (n, S, d_model) for the decoding
        steps of one `generate` call, or, with None, drop them."""
        for layer in self.decoder.layers:
            attention = layer.encoder_attn
            attention.encoder_keys_values = (
                None if encoder_output is None else attention.keys_and_values_for_decoding(encoder_output)
            )

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
        check_decoder_inputs(
            "LSG-BART decoder",
            ("decoder_input_ids", "decoder_inputs_embeds"),
            kwargs.get("decoder_input_ids"),
            kwargs.get("decoder_inputs_embeds"),
            kwargs.get(CACHE_ARGUMENT),
            self.config,
            self.shared.weight.dtype,
        )
        if encoder_outputs is None:
            wanted = ("output_attentions", "output_hidden_states", "return_dict")
            encoder_kwargs = {k: v for k, v in kwargs.items() if k in wanted}
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
        PreTrainedModel.__init__(self, config)  # BART's __init__ would build sub-modules that this one replaces
        self.model = LSGBartModel(config)
        self.register_buffer("final_logits_bias", torch.zeros((1, self.model.shared.num_embeddings)))
        self.lm_head = nn.Linear(config.d_model, self.model.shared.num_embeddings, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        inputs_embeds=None,
        decoder_inputs_embeds=None,
        labels=None,
        use_cache=None,
        **kwargs,
    ):
        """Same arguments and outputs as [`BartForConditionalGeneration.forward`] (named here, as `generate` checks
        its arguments against them). The LM head is the largest product of a decoding step: it goes through
        `project` (oneDNN for a plain float32 layer on CPU)."""
        if labels is not None:
            check_labels(labels, self.config)
            use_cache = False
            if decoder_input_ids is None and decoder_inputs_embeds is None:
                config = self.config
                decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            use_cache=use_cache,
            **{**kwargs, "return_dict": True},
        )
        logits = project(self.lm_head, outputs[0]) + self.final_logits_bias.to(outputs[0].device)
        loss = None
        if labels is not None:
            labels = labels.to(device=logits.device, dtype=torch.long)
            loss = F.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        rest = {name: value for name, value in outputs.items() if name != "last_hidden_state"}
        output = Seq2SeqLMOutput(loss=loss, logits=logits, **rest)  # the model's other fields, whatever their names
        return output if return_dict_requested(self.config, kwargs) else output.to_tuple()

    def generate(self, *args, **kwargs):
        """[`GenerationMixin.generate`]: the encoder output is kept once per input, not once per beam or returned
        sequence, and the cross-attention keys and values made from it are computed once, before decoding."""
        try:
            return super().generate(*args, **kwargs)
        finally:
            self.model.set_encoder_output_for_decoding(None)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        # `generate` calls this once, with the encoder output it decodes from (its own or the caller's). The
        # decoder's inputs are repeated per beam as usual; the encoder output is not (`LSGBartCrossAttention`).
        encoder_outputs = model_kwargs.pop("encoder_outputs", None)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=False, input_ids=input_ids, **model_kwargs
        )
        if encoder_outputs is not None:
            model_kwargs["encoder_outputs"] = encoder_outputs
            with torch.no_grad():
                self.model.set_encoder_output_for_decoding(encoder_outputs[0])
        return input_ids, model_kwargs


class LSGBartForSequenceClassification(LSGBartPreTrainedModel, BartForSequenceClassification):
    """LSG-BART with a classification head on the decoder state of the last `eos` token."""

    def __init__(self, config: LSGBartConfig, **kwargs):
        PreTrainedModel.__init__(self, config)  # BART's __init__ would build sub-modules that this one replaces
        self.model = LSGBartModel(config)
        self.classification_head = BartClassificationHead(
            config.d_model, config.d_model, config.num_labels, config.classifier_dropout
        )
        self.post_init()


class LSGBartForQuestionAnswering(LSGBartPreTrainedModel, BartForQuestionAnswering):
    """LSG-BART with a span-extraction head (start and end logits) for extractive question answering."""

    def __init__(self, config: LSGBartConfig):
        config.num_labels = 2
        PreTrainedModel.__init__(self, config)  # BART's __init__ would build sub-modules that this one replaces
        self.num_labels = config.num_labels
        self.model = LSGBartModel(config)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()


# Encoder-decoder checkpoints keep the decoder's token embeddings (tied) only as `model.shared.weight`: they are
# read from there, so that the decoder alone loads from any LSG-BART checkpoint.
@read_shared_embeddings_as_decoder_embeddings
class LSGBartForCausalLM(LSGBartPreTrainedModel, BartForCausalLM):
    """The LSG-BART decoder alone with a language-modelling head (the decoder has no LSG attention)."""

    @functools.wraps(BartForCausalLM.forward)  # `generate` reads the arguments the model takes from its signature
    def forward(self, input_ids=None, *args, **kwargs):
        """[`BartForCausalLM.forward`], with its inputs checked first."""
        where, dtype = "LSG-BART decoder", self.model.decoder.embed_tokens.weight.dtype
        inputs_embeds, labels, cache = kwargs.get("inputs_embeds"), kwargs.get("labels"), kwargs.get(CACHE_ARGUMENT)
        names = ("input_ids", "inputs_embeds")
        check_decoder_inputs(where, names, input_ids, inputs_embeds, cache, self.config, dtype)
        if labels is not None:
            check_token_ids(where, "labels", labels, self.config.vocab_size, ignored=-100)
        return super().forward(input_ids, *args, **kwargs)


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
    "LSGSelfAttention",
]
