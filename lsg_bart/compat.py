"""What differs between the Python, torch and transformers versions LSG-BART runs on, in one place.

The remote-code files run under whatever Python, torch and transformers the user has installed. They import the
version-dependent pieces from here; each is the native mechanism where the installed version has it, and an
equivalent otherwise. Nothing else in the package checks a version. Below the supported range, importing this
module (the first thing every remote-code file does) stops with one line naming the installed version and the
range; the range is what CI tests (`.ci/version_matrix.sh`).
"""

import functools
import os
import re
import sys

OLDEST_PYTHON = (3, 9)
OLDEST_TORCH = "2.1.0"
OLDEST_SUPPORTED = "4.46.0"  # transformers
# The oldest release of each package and the range CI tests it over.
RANGES = {"torch": (OLDEST_TORCH, "2.1 to the newest release"), "transformers": (OLDEST_SUPPORTED, "4.46 to 5.x")}


def major_minor(text):
    """(4, 57) for "4.57.6", "4.57.0.dev0" or "2.4.1+cu121"."""
    return tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", text).groups())


def require_python(installed):
    """Raise a one-line `ImportError` naming `installed` (a `sys.version_info`-like tuple) and the supported
    range when it is below the range."""
    if tuple(installed[:2]) < OLDEST_PYTHON:
        version, oldest = ".".join(map(str, installed[:3])), ".".join(map(str, OLDEST_PYTHON))
        raise ImportError(
            f"LSG-BART needs Python>={oldest} (tested from {oldest} to 3.13); this environment has Python {version}"
        )


def require_release(package, installed):
    """Raise a one-line `ImportError` naming `installed` (a release of `package`: "torch" or "transformers") and
    the supported range when it is below the range."""
    oldest, tested = RANGES[package]
    if major_minor(installed) < major_minor(oldest):
        raise ImportError(
            f"LSG-BART needs {package}>={oldest} (tested from {tested}); this environment has {package} "
            f"{installed}: pip install -U '{package}>={oldest}'"
        )


# The checks come before anything that an older version could fail on with a less clear error.
require_python(sys.version_info)

import torch  # noqa: E402

require_release("torch", torch.__version__)

import transformers  # noqa: E402

require_release("transformers", transformers.__version__)
TRANSFORMERS_VERSION = major_minor(transformers.__version__)

import dataclasses  # noqa: E402
import inspect  # noqa: E402

from transformers import BartConfig  # noqa: E402
from transformers.cache_utils import DynamicCache, EncoderDecoderCache  # noqa: E402
from transformers.models.bart.modeling_bart import BartDecoder, BartDecoderLayer  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# torch: the functions that newer releases added or renamed
# ---------------------------------------------------------------------------------------------------------------

TORCH_VERSION = major_minor(torch.__version__)

if TORCH_VERSION >= (2, 3):
    from torch.compiler import is_compiling
else:
    from torch._dynamo import is_compiling


def tracing():
    """Whether torch.compile or torch.export (ONNX export included) is tracing the model."""
    return is_compiling()


def autocast_enabled(device_type):
    """Whether autocast is on for `device_type` ("cpu", "cuda")."""
    if TORCH_VERSION >= (2, 4):
        return torch.is_autocast_enabled(device_type)
    return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


# Private and optional ops differ between builds and CPUs (oneDNN's bfloat16 products need AVX-512, for instance):
# each is probed once on tiny inputs against public ops, and used only where its probe passes.
# LSG_BART_PUBLIC_OPS=1 fails every probe, leaving public ops with the same results.
PUBLIC_OPS_ONLY = os.environ.get("LSG_BART_PUBLIC_OPS", "") not in ("", "0")


def probe(check):
    """Whether `check()` returns True; False if it raises (a missing op, an unsupported dtype or CPU) or when
    `LSG_BART_PUBLIC_OPS` is set."""
    if PUBLIC_OPS_ONLY:
        return False
    try:
        return bool(check())
    except (AttributeError, RuntimeError, NotImplementedError, TypeError):  # TypeError: an older op's signature
        return False


try:  # torch 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:
    flex_attention = create_block_mask = None


@functools.lru_cache(maxsize=None)  # asked at every forward pass that requests `flex`
def triton_available():
    """Whether `torch.compile` can build GPU kernels here (it needs Triton, which many CUDA installs lack)."""
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


# ---------------------------------------------------------------------------------------------------------------
# Configuration: transformers 5.x configs are strict dataclasses (fields and `__post_init__`); earlier ones are
# plain classes whose `__init__` takes keyword arguments.
# ---------------------------------------------------------------------------------------------------------------

DATACLASS_CONFIGS = dataclasses.is_dataclass(BartConfig)

if DATACLASS_CONFIGS:
    from huggingface_hub.dataclasses import strict

    ConfigBase = BartConfig
else:

    class ConfigBase(BartConfig):
        """`BartConfig` with the dataclass-style entry point: `__post_init__(**kwargs)` runs `BartConfig.__init__`."""

        def __post_init__(self, **kwargs):
            BartConfig.__init__(self, **kwargs)


def config_class(cls):
    """Make `cls` (fields with defaults, and a `__post_init__(**kwargs)`) a config class on any transformers.

    On dataclass transformers this is `huggingface_hub`'s `@strict`. Elsewhere it adds an `__init__` that sets each
    field from its keyword argument or default, then calls `__post_init__` with the other keyword arguments. On
    both, attributes are set through `cls._validated_setattr(name, value, assign)`.
    """
    if DATACLASS_CONFIGS:
        cls = strict(cls)
    else:
        defaults = {name: getattr(cls, name) for name in cls.__annotations__}

        def __init__(self, **kwargs):
            for name, default in defaults.items():
                setattr(self, name, kwargs.pop(name, default))
            self.__post_init__(**kwargs)

        __init__.__doc__ = cls.__doc__
        cls.__init__ = __init__
    # Outermost, so that a bad value gets the class's own `ValueError` before strict's type error.
    assign = cls.__setattr__

    def __setattr__(self, name, value):
        self._validated_setattr(name, value, assign)

    cls.__setattr__ = __setattr__
    return cls


# ---------------------------------------------------------------------------------------------------------------
# Modeling
# ---------------------------------------------------------------------------------------------------------------


def accepted_kwargs(function, **kwargs):
    """The keyword arguments that `function` accepts (e.g. `layer_idx`, added to BART's layers in 4.5x)."""
    parameters = inspect.signature(function).parameters
    return {name: value for name, value in kwargs.items() if name in parameters}


try:
    from transformers.utils import can_return_tuple
except ImportError:  # before 4.51 the models handle `return_dict` themselves

    def can_return_tuple(forward):
        return forward


try:
    from transformers.modeling_layers import GradientCheckpointingLayer
except ImportError:  # before 4.52 the encoder's loop checkpoints its layers
    GradientCheckpointingLayer = None


def call_layer(encoder, layer, *args):
    """`layer(*args)`, under activation checkpointing when it is enabled on `encoder` and the layer does not
    checkpoint itself (BART's layers do from 4.52 on)."""
    checkpoints_itself = GradientCheckpointingLayer is not None and isinstance(layer, GradientCheckpointingLayer)
    if encoder.gradient_checkpointing and encoder.training and not checkpoints_itself:
        return encoder._gradient_checkpointing_func(layer.__call__, *args)
    return layer(*args)


def return_dict_requested(config, kwargs):
    """Whether a model called with `kwargs` returns a `ModelOutput` (else a tuple)."""
    if kwargs.get("return_dict") is not None:
        return kwargs["return_dict"]
    return getattr(config, "return_dict", True)


def output_requested(config, kwargs, name):
    """`output_hidden_states` / `output_attentions`: the call's value, else the config's."""
    value = kwargs.get(name)
    return bool(getattr(config, name, False) if value is None else value)


# The decoder cache's argument: `cache` from transformers 5.25 on (`past_key_values` is deprecated there), before it
# `past_key_values`.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(BartDecoder.forward).parameters else "past_key_values"


def cached_length(past_key_values):
    """How many decoder tokens a cache already holds, where its shapes say so (legacy tuples, dynamic caches); 0
    for none, while tracing, and for static caches, whose length is in their contents (reading it costs a pass
    over the cache)."""
    if past_key_values is None or tracing():
        return 0
    if isinstance(past_key_values, (tuple, list)):  # before 4.52: per layer (self key, self value, ...)
        return past_key_values[0][0].shape[-2] if len(past_key_values) else 0
    if getattr(past_key_values, "is_compileable", False):
        return 0
    length = past_key_values.get_seq_length()
    return length if isinstance(length, int) else 0


# Before 4.52 (legacy tuple caches) an attention layer also returns its part of the cache; the decoder layer appends
# the cross-attention's part to the self-attention's.
ATTENTION_RETURNS_CACHE = "cross_attn_present_key_value" in inspect.getsource(BartDecoderLayer.forward)


def attention_result(output, weights):
    """What BART's decoder layer unpacks from its cross-attention: the output, the weights or None (and no cache
    part)."""
    return (output, weights, ()) if ATTENTION_RETURNS_CACHE else (output, weights)


DECODER_LAYER_SIGNATURE = inspect.signature(BartDecoderLayer.forward)
# Up to 4.5x a decoder layer returns a tuple (hidden states, attention weights if asked, the cache if asked); from
# 5.0 on, the hidden states alone (attention weights are recorded by hooks).
DECODER_LAYER_RETURNS_TUPLE = "outputs = (hidden_states,)" in inspect.getsource(BartDecoderLayer.forward)
# What BART's decoder layer passes on to its self-attention besides the hidden states and the mask: the cache (its
# argument is named after the version), head mask, `output_attentions`, `cache_position`, attention kwargs.
NOT_FOR_SELF_ATTENTION = ("encoder_hidden_states", "encoder_attention_mask", "cross_attn_layer_head_mask", "use_cache")


def decoder_layer_arguments(layer, args, kwargs):
    """A BART decoder layer's arguments after the hidden states, by name: transformers before 4.5x passes them by
    position under gradient checkpointing."""
    if not args:
        return kwargs
    bound = DECODER_LAYER_SIGNATURE.bind_partial(layer, None, *args, **kwargs).arguments
    named = {name: value for name, value in bound.items() if name not in ("self", "hidden_states", "kwargs")}
    return {**named, **bound.get("kwargs", {})}


def self_attention_arguments(arguments):
    """What BART's decoder layer of this transformers passes its self-attention, from the layer's `arguments`."""
    passed = {name: value for name, value in arguments.items() if name not in NOT_FOR_SELF_ATTENTION}
    if ATTENTION_RETURNS_CACHE and passed.get("past_key_value") is not None:  # legacy tuples, self-attention first
        passed["past_key_value"] = passed["past_key_value"][:2]
    return passed


def dynamic_self_attention_cache(attention_kwargs):
    """The dynamic cache that BART's decoder self-attention updates, from the arguments its layer passes it (named
    `cache` or `past_key_values` after the version); None for legacy tuples (before 4.5x), static caches (compiled
    decoding) and any other kind."""
    cache = attention_kwargs.get("cache", attention_kwargs.get("past_key_values"))
    if isinstance(cache, EncoderDecoderCache):
        cache = cache.self_attention_cache
    return cache if type(cache) is DynamicCache else None


def decoder_layer_result(hidden_states, self_attention_output, cross_attention_weights, arguments):
    """What BART's decoder layer of this transformers returns: the hidden states alone (5.x), or a tuple with the
    attention weights where asked and, up to 4.5x, the self-attention's cache where asked."""
    if not DECODER_LAYER_RETURNS_TUPLE:
        return hidden_states
    outputs = (hidden_states,)
    if arguments.get("output_attentions"):
        outputs += (self_attention_output[1], cross_attention_weights)
    if ATTENTION_RETURNS_CACHE and arguments.get("use_cache", True):
        outputs += (self_attention_output[2],)
    return outputs


# Encoder-decoder checkpoints keep the decoder's token embeddings (tied) only under the shared embeddings' name.
SHARED_EMBEDDINGS = "model.shared.weight"
DECODER_EMBEDDINGS = "model.decoder.embed_tokens.weight"

# `from_pretrained`'s argument for the weights' dtype: `dtype` from 4.56 on (5.x included), `torch_dtype` before.
DTYPE_ARGUMENT = "dtype" if TRANSFORMERS_VERSION >= (4, 56) else "torch_dtype"

# `from_pretrained(key_mapping=...)` renames checkpoint keys from 4.51 on (5.x included).
KEY_MAPPING_ON_LOAD = TRANSFORMERS_VERSION >= (4, 51)


def read_shared_embeddings_as_decoder_embeddings(model_class):
    """Let `model_class` (the decoder alone) load its token embeddings from an encoder-decoder checkpoint.

    From 4.51 on, `from_pretrained` gets a default `key_mapping` that renames the key; before, state dicts are
    loaded module by module and a load pre-hook renames it.
    """
    if KEY_MAPPING_ON_LOAD:
        original = model_class.from_pretrained.__func__

        def from_pretrained(cls, *args, **kwargs):
            if kwargs.get("key_mapping") is None:
                # A plain name, not an anchored regex: transformers 5 writes the reverse mapping's source back
                # as the key when saving.
                kwargs["key_mapping"] = {SHARED_EMBEDDINGS: DECODER_EMBEDDINGS}
            return original(cls, *args, **kwargs)

        from_pretrained.__doc__ = original.__doc__
        model_class.from_pretrained = classmethod(from_pretrained)
        return model_class

    original_init = model_class.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self._register_load_state_dict_pre_hook(rename_shared_embeddings)

    model_class.__init__ = __init__
    # The loader lists missing keys before the hook runs; the decoder's embeddings come from either name, and the
    # head is tied to them.
    model_class._keys_to_ignore_on_load_missing = [re.escape(DECODER_EMBEDDINGS), r"^lm_head\.weight$"]
    model_class._keys_to_ignore_on_load_unexpected = [re.escape(SHARED_EMBEDDINGS)]
    return model_class


def rename_shared_embeddings(state_dict, prefix, *args):
    """Load pre-hook (transformers 4.46 to 4.50): the shared embeddings become the decoder's."""
    shared, decoder = prefix + SHARED_EMBEDDINGS, prefix + DECODER_EMBEDDINGS
    if shared in state_dict and decoder not in state_dict:
        state_dict[decoder] = state_dict.pop(shared)


# ---------------------------------------------------------------------------------------------------------------
# Pipelines: from 5.x the base class merges generation settings itself (`_prepare_generate_kwargs`).
# ---------------------------------------------------------------------------------------------------------------


def pipeline_generate_kwargs(pipeline, generate_kwargs, default_max_new_tokens):
    """The `generate()` arguments of one pipeline call, with `max_new_tokens` defaulting to
    `default_max_new_tokens` when neither the call nor the model's generation config sets a length."""
    if hasattr(pipeline, "_prepare_generate_kwargs"):
        return pipeline._prepare_generate_kwargs(generate_kwargs)
    set_by_model = pipeline.model.generation_config.to_diff_dict()
    if not {"max_new_tokens", "max_length"} & (generate_kwargs.keys() | set_by_model.keys()):
        generate_kwargs = {**generate_kwargs, "max_new_tokens": default_max_new_tokens}
    return generate_kwargs


def pipeline_tokenizer(model):
    """The tokenizer of `model`'s checkpoint, for pipelines built by a transformers (before 4.52) that loads
    tokenizers only for the model types it knows."""
    return transformers.AutoTokenizer.from_pretrained(model.config._name_or_path)


__all__ = [
    "CACHE_ARGUMENT",
    "DTYPE_ARGUMENT",
    "ConfigBase",
    "accepted_kwargs",
    "attention_result",
    "autocast_enabled",
    "cached_length",
    "call_layer",
    "can_return_tuple",
    "config_class",
    "create_block_mask",
    "decoder_layer_arguments",
    "decoder_layer_result",
    "dynamic_self_attention_cache",
    "flex_attention",
    "output_requested",
    "pipeline_generate_kwargs",
    "pipeline_tokenizer",
    "read_shared_embeddings_as_decoder_embeddings",
    "return_dict_requested",
    "self_attention_arguments",
    "tracing",
    "triton_available",
]
