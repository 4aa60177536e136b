"""Convert a BART checkpoint to LSG-BART, or resize / upgrade an LSG-BART checkpoint.

Library:

    >>> from lsg_bart.convert import convert_checkpoint
    >>> convert_checkpoint("facebook/bart-base", "lsg-bart-base-4096", max_sequence_length=4096,
    ...                    architecture="BartForConditionalGeneration")

Command line (`lsg-bart-convert`, `python -m lsg_bart.convert` or `python convert_checkpoint.py`):

    lsg-bart-convert --initial_model facebook/bart-base --model_name lsg-bart-base-4096 --max_sequence_length 4096

What happens to the weights (LSG-SPEC section 6):

* Position tables (encoder and decoder): the 2 offset rows are kept, the learned rows are tiled up to
  `max_sequence_length` rows (or cut).
* Global embeddings (512 rows): the source encoder's learned positions brought to 512 rows (every k-th row, or
  Gaussian padding below 512 rows), read column by column with `global_positional_stride`, plus the `bos` embedding
  on row 0 and the `mask` embedding on the other rows, or (`random_global_init`) plus rows sampled from a Gaussian
  fitted to the token embeddings. `resize_lsg` keeps an LSG model's global embeddings and only changes the length.

The output folder is written to a hidden work folder beside it and renamed at the end: it is complete or absent.
Nothing is removed that the converter did not write: `--overwrite` replaces only a folder that holds a BART /
LSG-BART checkpoint and nothing else, never the source, a folder around it, the current or home directory; work
folders left by killed runs are recognised (a locked marker file) and removed by the next run on the same output.
"""

import argparse
import fnmatch
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so leftovers of killed runs are named rather than removed
    fcntl = None

from . import REMOTE_CODE_FILES
from .cli import OneLineErrorParser, json_object, one_line

# torch, transformers and the model code are imported where they are first needed (they take seconds to load):
# `--help`, argument errors and the output-path checks answer before that.

logger = logging.getLogger("lsg_bart.convert")

# BART architecture -> (LSG class name, Auto class that loads it, pipeline tag)
ARCHITECTURES = {
    "BartModel": ("LSGBartModel", "AutoModel", "feature-extraction"),
    "BartForConditionalGeneration": ("LSGBartForConditionalGeneration", "AutoModelForSeq2SeqLM", "summarization"),
    "BartForSequenceClassification": (
        "LSGBartForSequenceClassification",
        "AutoModelForSequenceClassification",
        "text-classification",
    ),
    "BartForQuestionAnswering": ("LSGBartForQuestionAnswering", "AutoModelForQuestionAnswering", "question-answering"),
    "BartForCausalLM": ("LSGBartForCausalLM", "AutoModelForCausalLM", "text-generation"),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
DEFAULT_ARCHITECTURE = "BartForConditionalGeneration"

# Auto classes that load an encoder-decoder checkpoint (all of them) and a decoder-only one.
ENCODER_DECODER_AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForSeq2SeqLM",
    "AutoModelForSequenceClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForCausalLM",
)
DECODER_AUTO_CLASSES = ("AutoModelForCausalLM",)

DTYPES = ("float32", "float16", "bfloat16")  # names of torch dtypes

# Fields that only an LSG config has: their presence marks an LSG source (a legacy one has model_type "bart").
LSG_FIELDS = ("sparsity_type", "block_size", "sparse_block_size", "sparsity_factor", "num_global_tokens")
LSG_SETTINGS = (
    "block_size",
    "sparse_block_size",
    "sparsity_factor",
    "sparsity_type",
    "num_global_tokens",
    "adaptive",
    "mask_first_token",
    "pass_global_tokens_to_decoder",
    "pool_with_global",
    "lsh_num_pre_rounds",
)
BART_MODEL_TYPES = ("bart", "lsg_bart")
# Source config entries that the new config sets itself.
_DROPPED_CONFIG_KEYS = (
    "model_type",
    "architectures",
    "auto_map",
    "base_model_prefix",
    "transformers_version",
    "_name_or_path",
    "_commit_hash",
    "torch_dtype",
    "dtype",
    "max_position_embeddings",
)
POSITION_OFFSET = 2  # BART's learned position tables start with 2 extra rows


class ConversionWarning(UserWarning):
    """Something the converter worked around (e.g. a tokenizer without a usable mask token)."""


# ---------------------------------------------------------------------------------------------------------------
# Weights (LSG-SPEC 6.2 - 6.3)
# ---------------------------------------------------------------------------------------------------------------


def tile_positions(weight, max_sequence_length, offset=POSITION_OFFSET):
    """Keep the `offset` rows, then tile the learned rows `[offset:]` to `max_sequence_length` rows (or cut them)."""
    import torch

    learned = weight[offset:]
    repeats = math.ceil(max_sequence_length / learned.shape[0])
    return torch.cat([weight[:offset], learned.repeat(repeats, 1)[:max_sequence_length]], dim=0)


def _gaussian_rows(rows, num_rows, generator):
    """`num_rows` rows drawn from a Gaussian with the per-dimension mean and std of `rows` (float32)."""
    import torch

    rows = rows.float()
    mean = rows.mean(0)
    std = rows.std(0) if rows.shape[0] > 1 else torch.zeros_like(mean)
    noise = torch.randn(num_rows, rows.shape[1], generator=generator)
    return mean + std * noise


def positional_global_rows(positions, global_positional_stride=64, generator=None, num_rows=None):
    """The learned position rows `(P, d)` brought to `num_rows` rows and reordered with the stride (LSG-SPEC 6.3).

    P a multiple of 512: every (P/512)-th row; P above 512: cut to a multiple first; P below 512: Gaussian rows
    appended (drawn with `generator`). Then, with `k = floor(P/512)` (1 when padded) and `s = stride // k`, the 512
    rows are seen as a `(512/s) x s` grid read column by column. `num_rows` defaults to `MAX_GLOBAL_TOKENS` (512).
    """
    import torch

    from .configuration_lsg_bart import MAX_GLOBAL_TOKENS

    num_rows = MAX_GLOBAL_TOKENS if num_rows is None else num_rows

    if not isinstance(global_positional_stride, int) or global_positional_stride < 1:
        raise ValueError(f"invalid global_positional_stride={global_positional_stride!r}; expected a positive integer")
    positions = positions.float()
    P, d = positions.shape
    if P >= num_rows:
        k = P // num_rows
        rows = positions[: k * num_rows : k]
    else:
        k = 1
        rows = torch.cat([positions, _gaussian_rows(positions, num_rows - P, generator)], dim=0)
    s = max(global_positional_stride // k, 1)
    if num_rows % s != 0:
        raise ValueError(
            f"invalid global_positional_stride={global_positional_stride}: with {P} position rows the grid width is "
            f"{global_positional_stride} // {k} = {s}, which must divide {num_rows} (use a power of two)"
        )
    return rows.reshape(num_rows // s, s, d).transpose(0, 1).reshape(num_rows, d)


def sample_like_embeddings(embeddings, num_rows, generator=None):
    """`num_rows` rows drawn from a multivariate Gaussian fitted (mean, covariance) to the embedding table."""
    import torch

    table = embeddings.float()
    mean = table.mean(0)
    centred = table - mean
    cov = (centred.T @ centred).double() / max(table.shape[0] - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # robust to a singular covariance
    scale = eigenvectors * eigenvalues.clamp(min=0).sqrt()  # (d, d): cov = scale @ scale.T
    noise = torch.randn(num_rows, table.shape[1], generator=generator, dtype=torch.float64)
    return (mean.double() + noise @ scale.T).float()


def make_global_embeddings(
    positions,
    token_embeddings,
    bos_token_id=None,
    mask_token_id=None,
    global_positional_stride=64,
    random_global_init=False,
    generator=None,
):
    """The 512 global embeddings of a converted model, in float32 (LSG-SPEC 6.3).

    `positions` are the source encoder's learned position rows (without the 2 offset rows), `token_embeddings` its
    token embedding table. Without `random_global_init`, row 0 gets the `bos` embedding and rows 1..511 the `mask`
    embedding; with it (or when the mask id is unusable), rows sampled from a Gaussian fitted to the token embeddings
    are added instead, row 0 being the `bos` embedding.
    """
    rows = positional_global_rows(positions, global_positional_stride, generator)
    vocab_size = token_embeddings.shape[0]

    def usable(token_id):
        return token_id is not None and 0 <= token_id < vocab_size

    if not random_global_init and not usable(mask_token_id):
        reason = "has no mask token" if mask_token_id is None else f"mask id {mask_token_id} is outside the vocabulary"
        warnings.warn(
            f"The tokenizer {reason} (model vocabulary: {vocab_size} tokens); falling back to --random_global_init.",
            ConversionWarning,
            stacklevel=2,
        )
        random_global_init = True

    table = token_embeddings.float()
    if random_global_init:
        added = sample_like_embeddings(table, rows.shape[0], generator)
        if usable(bos_token_id):
            added[0] = table[bos_token_id]
    else:
        added = table[mask_token_id].expand_as(rows).clone()
        if usable(bos_token_id):
            added[0] = table[bos_token_id]
    if not usable(bos_token_id):
        warnings.warn(
            f"No usable bos token id ({bos_token_id!r}); global token 0 gets no bos embedding.",
            ConversionWarning,
            stacklevel=2,
        )
    return rows + added


# ---------------------------------------------------------------------------------------------------------------
# Checking the request
# ---------------------------------------------------------------------------------------------------------------


def parse_model_kwargs(model_kwargs):
    """`--model_kwargs` as a dict of known config fields: a dict is checked as is, a string is parsed as a JSON
    object. Values are checked by `LSGBartConfig` when the config is made."""
    from .configuration_lsg_bart import LSGBartConfig

    if model_kwargs is None:
        return {}
    if isinstance(model_kwargs, str):
        model_kwargs = json_object(model_kwargs)
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model_kwargs must be a JSON object (a dict of config fields), got {model_kwargs!r}")
    known = LSGBartConfig()
    unknown = sorted(key for key in model_kwargs if not hasattr(known, key))
    if unknown:
        raise ValueError(
            f"--model_kwargs has unknown config field(s) {', '.join(map(repr, unknown))}; the LSG settings are "
            f"{', '.join(LSG_SETTINGS)} (any other LSGBartConfig / BartConfig field is accepted too)"
        )
    return dict(model_kwargs)


def resolve_architecture(architecture, config_dict):
    """The BART architecture name to convert: `architecture` if given, else the source config's."""
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    if architecture is None:
        names = config_dict.get("architectures") or []
        if not names:
            return DEFAULT_ARCHITECTURE
        name = names[0]
        where = "the source config's architecture"
    else:
        name = architecture
        where = "--architecture"
    base = name[3:] if name.startswith("LSGBart") else name
    if base not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r} ({where}); supported: {supported} (or their LSG names)")
    return base


def load_source_config(initial_model, token=None):
    """The source's config.json as a dict (a local folder or a Hub id)."""
    from .configuration_lsg_bart import LSGBartConfig

    try:
        config_dict, _ = LSGBartConfig.get_config_dict(str(initial_model), token=token)
    except (OSError, ValueError) as error:
        reason = one_line(str(error)) or type(error).__name__
        if not Path(str(initial_model)).exists():
            reason = f"no such local folder, and as a Hub model id: {reason}"
        raise ValueError(f"cannot read a model config from {str(initial_model)!r}: {reason}") from None
    model_type = config_dict.get("model_type")
    if model_type not in BART_MODEL_TYPES:
        raise ValueError(
            f"{str(initial_model)!r} is not a BART checkpoint (model_type={model_type!r}); the converter takes "
            f"model_type 'bart' (BART or a legacy LSG-BART) or 'lsg_bart'"
        )
    return config_dict


def is_lsg_config(config_dict):
    """Whether a config.json describes an LSG-BART model (new `lsg_bart` or legacy `bart` with LSG fields)."""
    return config_dict.get("model_type") == "lsg_bart" or any(field in config_dict for field in LSG_FIELDS)


def make_lsg_config(config_dict, architecture, max_sequence_length, model_kwargs, dtype=None):
    """`LSGBartConfig` from the source config, the LSG settings and the new length; invalid settings -> ValueError."""
    from .configuration_lsg_bart import LSGBartConfig

    values = {key: value for key, value in config_dict.items() if key not in _DROPPED_CONFIG_KEYS}
    values.update(model_kwargs)
    values["max_position_embeddings"] = max_sequence_length
    values["architectures"] = [ARCHITECTURES[architecture][0]]
    bs = values.get("block_size", LSGBartConfig.block_size)
    # Checked before the config (which names the nearest block sizes): here the length is what the user chooses.
    if is_exactly_int(bs) and bs > 0 and max_sequence_length > 2 * bs and max_sequence_length % bs != 0:
        lower, upper = max_sequence_length // bs * bs, (max_sequence_length // bs + 1) * bs
        raise ValueError(
            f"invalid LSG settings: max_sequence_length={max_sequence_length} is not a multiple of "
            f"block_size={bs}, so an input of that length would be padded past the position table; use "
            f"{lower} or {upper}"
        )
    try:
        config = LSGBartConfig(**values)
    except ValueError as error:
        raise ValueError(f"invalid LSG settings: {error}") from None
    except Exception as error:  # huggingface_hub's strict-dataclass type errors
        if type(error).__name__.startswith("StrictDataclass"):
            raise ValueError(f"invalid LSG settings: {error}") from None
        raise
    if dtype is not None:
        config.dtype = dtype
    return config


def is_exactly_int(value):
    """Whether `value` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_length(max_sequence_length):
    if not is_exactly_int(max_sequence_length) or max_sequence_length < 1:
        raise ValueError(f"invalid max_sequence_length={max_sequence_length!r}; expected a positive integer")


def _check_dtype(dtype):
    if dtype is None:
        return None
    if not isinstance(dtype, str):  # a torch.dtype
        dtype = str(dtype).removeprefix("torch.")
    if dtype not in DTYPES:
        raise ValueError(f"invalid dtype={dtype!r}; expected one of {', '.join(DTYPES)}")
    return dtype


# ---------------------------------------------------------------------------------------------------------------
# Conversion in memory
# ---------------------------------------------------------------------------------------------------------------


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)


def _has_tokenizer_files(initial_model, token):
    """Whether the source ships a tokenizer (transformers would otherwise build an empty one with made-up ids)."""
    if Path(initial_model).is_dir():
        return any((Path(initial_model) / name).is_file() for name in TOKENIZER_FILES)
    from transformers.utils import cached_file

    for name in TOKENIZER_FILES[:3]:
        try:
            if cached_file(str(initial_model), name, token=token, _raise_exceptions_for_missing_entries=False):
                return True
        except OSError:
            return False
    return False


def _load_tokenizer(initial_model, token):
    from transformers import AutoTokenizer, BartConfig

    if not _has_tokenizer_files(initial_model, token):
        warnings.warn(
            f"{str(initial_model)!r} has no tokenizer files; the output folder will have none, and the global "
            "tokens get the config's bos id and a random init (no mask token).",
            ConversionWarning,
            stacklevel=3,
        )
        return None
    try:
        # A BART config stands in for the source's: a legacy LSG config's auto_map names a file that is not there.
        return AutoTokenizer.from_pretrained(str(initial_model), token=token, config=BartConfig())
    except Exception as error:  # no tokenizer files, or one transformers cannot build
        warnings.warn(
            f"No tokenizer could be loaded from {str(initial_model)!r} ({type(error).__name__}: {error}); the output "
            "folder will have no tokenizer files.",
            ConversionWarning,
            stacklevel=3,
        )
        return None


def lsg_class(architecture):
    """The LSG-BART class of a BART architecture name."""
    from . import modeling_lsg_bart

    return getattr(modeling_lsg_bart, ARCHITECTURES[architecture][0])


def _load_source_model(initial_model, config_dict, architecture, lsg_source, token):
    import transformers

    from .compat import DTYPE_ARGUMENT
    from .configuration_lsg_bart import LSGBartConfig

    cls = lsg_class(architecture) if lsg_source else getattr(transformers, architecture)
    kwargs = {"token": token, DTYPE_ARGUMENT: "auto", "output_loading_info": True}
    if lsg_source:
        # A legacy config (model_type "bart") is read by this project's config class, whatever its auto_map says.
        kwargs["config"] = LSGBartConfig.from_dict(config_dict)
    model, info = cls.from_pretrained(str(initial_model), **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        warnings.warn(
            f"{architecture}: {len(missing)} weight(s) not in {str(initial_model)!r} were initialised randomly "
            f"(seeded): {shown}",
            ConversionWarning,
            stacklevel=3,
        )
    return model.eval()


def _load_generation_config(initial_model, token, config):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(initial_model), token=token)
    except (OSError, ValueError):
        return GenerationConfig.from_model_config(config)


def convert_model(
    initial_model,
    max_sequence_length=4096,
    architecture=None,
    random_global_init=False,
    global_positional_stride=64,
    keep_first_global_token=False,
    resize_lsg=False,
    model_kwargs=None,
    seed=123,
    dtype=None,
    token=None,
):
    """Convert in memory. Returns `(model, tokenizer, info)`: the LSG model (eval mode), the source tokenizer with
    `model_max_length = max_sequence_length` (or `None` if the source has none), and a dict describing the
    conversion (used for the model card). Arguments as in [`convert_checkpoint`]."""
    import torch

    _check_length(max_sequence_length)
    dtype = _check_dtype(dtype)
    model_kwargs = parse_model_kwargs(model_kwargs)
    if not isinstance(global_positional_stride, int) or global_positional_stride < 1:
        raise ValueError(f"invalid global_positional_stride={global_positional_stride!r}; expected a positive integer")

    config_dict = load_source_config(initial_model, token)
    lsg_source = is_lsg_config(config_dict)
    architecture = resolve_architecture(architecture, config_dict)
    source_length = config_dict.get("max_position_embeddings")
    if resize_lsg and not lsg_source:
        raise ValueError(f"--resize_lsg needs an LSG-BART source; {str(initial_model)!r} is a plain BART checkpoint")
    if keep_first_global_token and not lsg_source:
        raise ValueError(
            f"--keep_first_global_token needs an LSG-BART source (one with global tokens); {str(initial_model)!r} "
            "is a plain BART checkpoint"
        )
    if lsg_source and source_length is not None and max_sequence_length < source_length:
        raise ValueError(
            f"max_sequence_length={max_sequence_length} is below the source's {source_length}; an LSG-BART "
            f"checkpoint can only be resized to {source_length} tokens or more"
        )
    config = make_lsg_config(config_dict, architecture, max_sequence_length, model_kwargs, dtype)
    if not lsg_source and source_length is not None and max_sequence_length < source_length:
        warnings.warn(
            f"max_sequence_length={max_sequence_length} is below the source's {source_length}: the position tables "
            "are cut.",
            ConversionWarning,
            stacklevel=2,
        )

    torch.manual_seed(seed)  # heads that the source lacks are initialised reproducibly
    generator = torch.Generator().manual_seed(seed)
    tokenizer = _load_tokenizer(initial_model, token)
    source = _load_source_model(initial_model, config_dict, architecture, lsg_source, token)
    source_dtype = source.dtype
    out_dtype = getattr(torch, dtype) if dtype is not None else source_dtype
    config.dtype = str(out_dtype).removeprefix("torch.")

    prefix = "" if architecture == "BartModel" else "model."
    state = source.state_dict()
    global_key = f"{prefix}encoder.global_embeddings.weight"
    global_init = "none (decoder-only model)"
    with torch.no_grad():
        if architecture != "BartForCausalLM" and not resize_lsg:
            token_embeddings = source.get_input_embeddings().weight
            mask_id = tokenizer.mask_token_id if tokenizer is not None else None
            bos_id = tokenizer.bos_token_id if tokenizer is not None else None
            if bos_id is None:
                bos_id = config_dict.get("bos_token_id")
            random_init = random_global_init or not (mask_id is not None and 0 <= mask_id < token_embeddings.shape[0])
            new_global = make_global_embeddings(
                state[f"{prefix}encoder.embed_positions.weight"][POSITION_OFFSET:],
                token_embeddings,
                bos_token_id=bos_id,
                mask_token_id=mask_id,
                global_positional_stride=global_positional_stride,
                random_global_init=random_global_init,
                generator=generator,
            )
            global_init = "Gaussian fitted to the token embeddings" if random_init else "bos / mask token embeddings"
            global_init += f" + source positions (stride {global_positional_stride})"
            if keep_first_global_token:
                new_global[0] = state[global_key][0].float()
                global_init += "; first global token kept from the source"
            state[global_key] = new_global.to(source_dtype)
        elif resize_lsg:
            global_init = "kept from the source"
        for side in ("encoder", "decoder"):
            key = f"{prefix}{side}.embed_positions.weight"
            if key in state:
                state[key] = tile_positions(state[key], max_sequence_length)

    target_class = lsg_class(architecture)
    with torch.device("meta"):
        model = target_class(config)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise RuntimeError(
            f"weights do not match {target_class.__name__}: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    on_meta = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"weights left unset after conversion: {on_meta}")
    model.to(out_dtype).eval()
    model.generation_config = _load_generation_config(initial_model, token, config)
    del source

    if tokenizer is not None:
        tokenizer.model_max_length = max_sequence_length
        tokenizer.init_kwargs["model_max_length"] = max_sequence_length

    info = {
        "initial_model": str(initial_model),
        "architecture": architecture,
        "lsg_class": target_class.__name__,
        "auto_class": ARCHITECTURES[architecture][1],
        "pipeline_tag": ARCHITECTURES[architecture][2],
        "source": "LSG-BART" if lsg_source else "BART",
        "legacy_source": lsg_source and config_dict.get("model_type") == "bart",
        "source_length": source_length,
        "max_sequence_length": max_sequence_length,
        "resize_lsg": resize_lsg,
        "global_init": global_init,
        "seed": seed,
        "dtype": config.dtype,
    }
    return model, tokenizer, info


# ---------------------------------------------------------------------------------------------------------------
# Output folder
# ---------------------------------------------------------------------------------------------------------------


def model_card(config, info):
    """README.md of a converted checkpoint: YAML front matter, the LSG settings, how to load it."""
    auto_class = info["auto_class"]
    tags = ["lsg", "long-context", "bart"]
    if info["pipeline_tag"] == "summarization":
        tags.append("summarization")
    front = ["---", f"base_model: {json.dumps(info['initial_model'])}", "tags:"]
    front += [f"- {tag}" for tag in tags]
    front += [f"pipeline_tag: {info['pipeline_tag']}", "library_name: transformers", "---"]

    settings = [("max_sequence_length", info["max_sequence_length"])]
    settings += [(name, getattr(config, name)) for name in LSG_SETTINGS]
    table = ["| setting | value |", "|---|---|"] + [f"| `{name}` | `{value}` |" for name, value in settings]
    conversion = [
        f"- source: `{info['initial_model']}` ({info['source']}, {info['source_length']} positions"
        + (", legacy LSG checkpoint upgraded" if info["legacy_source"] else "")
        + ")",
        f"- architecture: `{info['lsg_class']}` (from `{info['architecture']}`)",
        f"- global embeddings: {info['global_init']}",
        f"- dtype: `{info['dtype']}`, seed: `{info['seed']}`",
    ]
    usage_call = "model(**inputs)"
    if auto_class == "AutoModelForSeq2SeqLM":
        usage_call = "summary_ids = model.generate(**inputs, num_beams=2, max_new_tokens=64)"
    snippet = [
        "```python",
        f"from transformers import AutoTokenizer, {auto_class}",
        "",
        'path = "path/or/hub-id/of/this/model"',
        "tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)",
        f"model = {auto_class}.from_pretrained(path, trust_remote_code=True)",
        "",
        f'inputs = tokenizer(long_text, truncation=True, max_length={info["max_sequence_length"]}, return_tensors="pt")',
        usage_call,
        "```",
    ]
    body = [
        "",
        f"# LSG-BART ({info['max_sequence_length']} tokens)",
        "",
        f"`{info['initial_model']}` converted to LSG attention (Local + Sparse + Global) so that its encoder reads "
        f"sequences of up to {info['max_sequence_length']} tokens, with memory and time linear in the length. "
        "The weights are those of the source, with tiled position tables and new global tokens: fine-tune it on "
        "your task before use.",
        "",
        "The model code is in this folder (`modeling_lsg_bart.py`, `configuration_lsg_bart.py`): load it with "
        "`trust_remote_code=True` (`AutoModel`, `AutoModelForSeq2SeqLM`, `AutoModelForSequenceClassification`, "
        "`AutoModelForQuestionAnswering`, `AutoModelForCausalLM`; a head the checkpoint lacks is initialised "
        "randomly).",
        "",
        "## LSG settings",
        "",
        *table,
        "",
        "Inputs longer than `2 * block_size` are padded to a multiple of `block_size` when `adaptive` is set.",
        "",
        "## Conversion",
        "",
        *conversion,
        "",
        "## How to load it",
        "",
        *snippet,
        "",
    ]
    return "\n".join(front + body)


def save_converted(model, tokenizer, info, folder):
    """Write the converted checkpoint into `folder` (which must exist)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    package = Path(__file__).resolve().parent
    for name in REMOTE_CODE_FILES:
        if not (folder / name).exists():  # save_pretrained copies them for registered classes; be sure
            shutil.copyfile(package / name, folder / name)
    if not (folder / "generation_config.json").exists():
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for pickled in folder.glob("*.bin"):
        pickled.unlink()
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():  # transformers writes the weights readable by the owner only
        path.chmod(0o666 & ~umask)
    (folder / "README.md").write_text(model_card(model.config, info), encoding="utf-8")


def _test_inputs(length, config, tokenizer, generator):
    import torch

    special = {config.bos_token_id, config.eos_token_id, config.pad_token_id, config.decoder_start_token_id}
    if tokenizer is not None:
        special |= set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(config.vocab_size) if i not in special])
    ids = allowed[torch.randint(len(allowed), (1, length), generator=generator)]
    if length >= 2:
        ids[0, 0], ids[0, -1] = config.bos_token_id, config.eos_token_id
    return ids


# Inputs of the Auto classes other than the checkpoint's own: long enough for the LSG path (more than 2 blocks).
SHORT_TEST_BLOCKS = 4
# Classes whose decoder reads its own short input in the test: a full-length decoder pass, and full-length logits
# over the vocabulary, would cost more than the encoder pass that the test is for. (The classification and
# question-answering heads read the decoder's states of the whole input.)
SHORT_DECODER_CLASSES = ("AutoModel", "AutoModelForSeq2SeqLM")


def run_checkpoint_test(folder, max_sequence_length=None, seed=0):
    """Load `folder` with AutoTokenizer and each Auto class (`trust_remote_code=True`) and run an input through each
    model: `max_sequence_length` tokens (default: the config's) through the class of the checkpoint's own
    architecture, and `SHORT_TEST_BLOCKS * block_size` tokens (at most that length) through the others, which share
    the encoder and decoder and differ only in their heads. The decoders of `SHORT_DECODER_CLASSES` read two tokens.
    Logs a line before and after each class.

    Returns `{auto class name: seconds}`.
    """
    import torch
    import transformers

    folder = str(folder)
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    length = max_sequence_length or config.max_position_embeddings
    tokenizer = None
    if (Path(folder) / "tokenizer_config.json").exists():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        if tokenizer.model_max_length != length:
            raise RuntimeError(f"tokenizer model_max_length is {tokenizer.model_max_length}, expected {length}")
    generator = torch.Generator().manual_seed(seed)
    short = min(length, SHORT_TEST_BLOCKS * config.block_size)
    inputs = {length: _test_inputs(length, config, tokenizer, generator)}
    inputs[short] = inputs[length][:, :short].clone()
    inputs[short][0, -1] = config.eos_token_id
    own = {lsg_name: auto for lsg_name, auto, _ in ARCHITECTURES.values()}.get((config.architectures or [None])[0])
    classes = DECODER_AUTO_CLASSES if not config.is_encoder_decoder else ENCODER_DECODER_AUTO_CLASSES
    classes = sorted(classes, key=lambda name: name != own)  # the full-length run first
    timings = {}
    for index, auto_name in enumerate(classes, 1):
        tokens = length if auto_name == own or len(classes) == 1 else short
        input_ids = inputs[tokens]
        logger.info("  test %d/%d %s: loading, then a %d-token input ...", index, len(classes), auto_name, tokens)
        start = time.perf_counter()
        auto_class = getattr(transformers, auto_name)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # heads a checkpoint lacks are expected here
        try:
            model = auto_class.from_pretrained(folder, trust_remote_code=True).eval()
        finally:
            transformers.logging.set_verbosity(verbosity)
        decoder = {}
        if auto_name in SHORT_DECODER_CLASSES and config.is_encoder_decoder:
            decoder["decoder_input_ids"] = torch.tensor([[config.decoder_start_token_id, config.bos_token_id]])
        with torch.inference_mode():
            outputs = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **decoder)
        main = outputs[0]
        if not torch.isfinite(main.float()).all():
            raise RuntimeError(f"{auto_name}: non-finite outputs on a {tokens}-token input")
        encoder_states = getattr(outputs, "encoder_last_hidden_state", None)
        if encoder_states is not None:
            expected = tokens + (config.num_global_tokens if config.pass_global_tokens_to_decoder else 0)
            if encoder_states.shape[1] != expected:
                raise RuntimeError(
                    f"{auto_name}: encoder output has {encoder_states.shape[1]} positions, expected {expected}"
                )
        timings[auto_name] = time.perf_counter() - start
        logger.info("  test %d/%d %s (%s): %d tokens -> %s in %.1fs", index, len(classes), auto_name,
                    type(model).__name__, tokens, tuple(main.shape), timings[auto_name])
        del model, outputs
    return timings


# ---------------------------------------------------------------------------------------------------------------
# The output folder: what may be replaced, work folders, publishing
# ---------------------------------------------------------------------------------------------------------------

# What a BART / LSG-BART checkpoint folder holds (save_pretrained, the tokenizers, this converter, the Hub's BART
# repositories): --overwrite replaces a folder that has a BART config.json and nothing but these.
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "README.md",
    ".gitattributes",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "flax_model.msgpack",
    "tf_model.h5",
    "rust_model.ot",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    *TOKENIZER_FILES,
    *REMOTE_CODE_FILES,
)

# Each run writes into a hidden work folder `.NAME.<random>.tmp/` beside the output, which holds this marker (what
# tells a later run that the folder is this program's), `new/NAME` (the checkpoint being written) and, while an
# --overwrite is published, `previous/NAME` (the old output). The run holds a lock on the marker until it ends, so a
# later run on the same output knows a folder whose marker it can lock is left over from a killed run.
WORK_MARKER = "lsg-bart-convert.json"
WRITTEN_BY = "lsg-bart-convert"


def _shown(names, limit=10):
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_path(model_name, initial_model):
    """The output folder `model_name` as a `Path`, after the checks that need neither the disk's contents nor any
    heavy import. `ValueError` for an empty name; for the current directory, the home directory, `/` or a folder
    that contains one of them; for the source folder, a folder inside it or a folder that contains it."""
    name = str(model_name)
    if not name.strip():
        raise ValueError("--model_name is empty; give the name of a new folder for the converted checkpoint")
    output = Path(name)
    target = output.resolve()
    if target == Path(target.anchor):
        raise ValueError(f"--model_name {name!r} is the root folder; give a new folder for the converted checkpoint")
    for what, folder in (("the current directory", Path.cwd()), ("the home directory", Path.home())):
        folder = folder.resolve()
        if target == folder or target in folder.parents:
            relation = "is" if target == folder else "contains"
            raise ValueError(
                f"--model_name {name!r} {relation} {what} ({folder}); give a new folder for the converted checkpoint"
            )
    source = Path(str(initial_model))
    if source.exists():
        source = source.resolve()
        if target == source or source in target.parents:
            where = "is the source folder" if target == source else "is inside the source folder"
            raise ValueError(f"--model_name {name!r} {where} {str(initial_model)!r}; the source is never written to")
        if target in source.parents:
            raise ValueError(
                f"--model_name {name!r} contains the source {str(initial_model)!r}, which replacing it would remove"
            )
    return output


def _checkpoint_problem(folder, entries):
    """Why `folder` (holding `entries`) is not a BART / LSG-BART checkpoint and nothing else, or None."""
    unexpected = [
        entry.name + ("/" if entry.is_dir() else "")
        for entry in entries
        if entry.is_dir() or not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in CHECKPOINT_FILES)
    ]
    if unexpected:
        verb = "is" if len(unexpected) == 1 else "are"
        return f"{_shown(unexpected)} {verb} not part of a BART / LSG-BART checkpoint"
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        return "it holds no config.json"
    except (OSError, ValueError, AttributeError) as error:
        return f"its config.json cannot be read as a model config ({type(error).__name__})"
    if model_type not in BART_MODEL_TYPES:
        return f"its config.json is not a BART / LSG-BART config (model_type={model_type!r})"
    return None


def check_replaceable(output, overwrite):
    """`FileExistsError` unless `output` is absent, an empty folder, or, with `overwrite`, a folder that holds a
    BART / LSG-BART checkpoint and nothing else. The message lists what `--overwrite` would have removed."""
    if not os.path.lexists(output):
        return
    if not output.is_dir():
        raise FileExistsError(f"output {str(output)!r} exists and is not a folder")
    entries = sorted(output.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(
            f"output folder {str(output)!r} is not empty; pass --overwrite (overwrite=True) to replace it"
        )
    problem = _checkpoint_problem(output, entries)
    if problem is not None:
        names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries]
        raise FileExistsError(
            f"--overwrite would remove everything in {str(output)!r} ({_shown(names)}), but {problem}; nothing was "
            "removed: empty that folder yourself or give another --model_name"
        )


def _work_folders(output):
    """This program's work folders for `output` (beside it), each with whether its marker's lock can be taken."""
    parent = output.absolute().parent
    if not parent.is_dir():
        return []
    prefix = f".{output.name}."
    found = []
    for path in sorted(parent.iterdir()):
        if not (path.name.startswith(prefix) and path.name.endswith(".tmp")) or path.is_symlink() or not path.is_dir():
            continue
        marker = path / WORK_MARKER
        if not marker.is_file():
            if not any(path.iterdir()):  # killed before it wrote its marker: an empty folder, nothing to lose
                found.append(path)
            continue
        text = marker.read_text(encoding="utf-8")
        try:
            record = json.loads(text) if text else None  # empty: killed while writing the marker
        except ValueError:
            continue
        if record is None or (record.get("written_by"), record.get("output")) == (WRITTEN_BY, output.name):
            found.append(path)
    return found


def remove_leftovers(output):
    """Remove the work folders that killed runs (SIGKILL, out of memory) left beside `output`; an old output that a
    run killed in the middle of `--overwrite` had moved aside is put back first. Folders whose run is still going
    are left alone; without file locks (Windows) the folders are only named in a warning."""
    for work in _work_folders(output):
        if fcntl is None:
            warnings.warn(
                f"{work} was left by an interrupted conversion to {str(output)!r}; remove it if no other conversion "
                "is running",
                ConversionWarning,
                stacklevel=2,
            )
            continue
        marker = work / WORK_MARKER
        if not marker.exists():
            work.rmdir()
            continue
        with open(marker, "a", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s belongs to a conversion that is still running; left alone", work)
                continue
            _discard(work, output)
        logger.info("Removed %s, left by an interrupted conversion", work)


def _start_work(output):
    """A new work folder beside `output`, with its marker written and locked. Returns `(folder, marker handle)`:
    closing the handle (or the process ending, however it ends) releases the lock."""
    parent = output.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent))
    handle = open(work / WORK_MARKER, "w", encoding="utf-8")
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX)
    json.dump({"written_by": WRITTEN_BY, "output": output.name, "pid": os.getpid()}, handle)
    handle.flush()
    return work, handle


def _discard(work, output):
    """Remove the work folder `work`, putting the old output back if the run stopped between the two renames of
    `_publish`. The marker goes last, so that a run killed in here still leaves a folder the next run recognises."""
    previous = work / "previous" / output.name
    if previous.exists() and not os.path.lexists(output):
        os.replace(previous, output)
        logger.warning("Put %s back: an interrupted --overwrite had moved it aside", output)
    for entry in work.iterdir():
        if entry.name == WORK_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (work / WORK_MARKER).unlink(missing_ok=True)
    work.rmdir()


def _publish(work, output, overwrite):
    """Rename the complete checkpoint `work/new/NAME` to `output`. An old `output` is checked again (it may have
    changed during the conversion) and moved into `work/previous/` first; `_discard` removes it afterwards."""
    if os.path.lexists(output):
        check_replaceable(output, overwrite)
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        else:
            (work / "previous").mkdir()
            os.replace(output, work / "previous" / output.name)
    os.replace(work / "new" / output.name, output)


def push_folder_to_hub(folder, repo_id, private=False, token=None, commit_message=None):
    """Create (or reuse) the Hub repository `repo_id` and upload `folder` to it. Returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message or "Upload LSG-BART checkpoint",
    )
    return str(url)


def convert_checkpoint(
    initial_model,
    model_name,
    max_sequence_length=4096,
    architecture=None,
    random_global_init=False,
    global_positional_stride=64,
    keep_first_global_token=False,
    resize_lsg=False,
    model_kwargs=None,
    seed=123,
    run_test=False,
    push_to_hub=None,
    private=False,
    token=None,
    overwrite=False,
    dtype=None,
):
    """Convert `initial_model` (a local folder or Hub id of a BART or LSG-BART checkpoint) and save it to the
    folder `model_name`. Returns the output folder as a `Path`.

    The checkpoint is written into a hidden work folder beside the output and renamed to it at the end: the output
    is complete or absent. Work folders left by killed runs on the same output are removed first.

    Args:
        initial_model: the source checkpoint.
        model_name: the output folder; never the source, a folder around it, the current or home directory.
        max_sequence_length: the new maximum length (position tables, tokenizer `model_max_length`).
        architecture: one of `SUPPORTED_ARCHITECTURES` (default: the source config's `architectures`).
        random_global_init: global embeddings from a Gaussian fitted to the token embeddings instead of the
            bos / mask embeddings.
        global_positional_stride: stride of the positional part of the global embeddings.
        keep_first_global_token: LSG source: keep its global token 0.
        resize_lsg: LSG source: only change the length (keep its global embeddings).
        model_kwargs: dict or JSON string of config fields (the LSG settings: block_size, sparse_block_size,
            sparsity_factor, sparsity_type, num_global_tokens, ...).
        seed: seed of every random draw (Gaussian rows, heads missing from the source).
        run_test: before publishing, load the result with each Auto class and run inputs through them
            (`run_checkpoint_test`).
        push_to_hub: a Hub repository id to upload the finished folder to (`private`, `token`).
        overwrite: replace a non-empty output folder, if it holds a BART / LSG-BART checkpoint and nothing else
            (only once the new one is complete).
        dtype: `"float32"`, `"float16"` or `"bfloat16"` (default: the source's).

    Raises:
        ValueError: a bad argument or output path, a source that is not BART, invalid LSG settings.
        FileExistsError: a non-empty output folder without `overwrite`, or one that is not a checkpoint.
    """
    # The checks that need neither torch nor transformers come first: they answer at once.
    output = check_output_path(model_name, initial_model)
    _check_length(max_sequence_length)
    _check_dtype(dtype)
    if architecture is not None:
        resolve_architecture(architecture, {})
    remove_leftovers(output)
    check_replaceable(output, overwrite)
    parse_model_kwargs(model_kwargs)

    start = time.perf_counter()
    model, tokenizer, info = convert_model(
        initial_model,
        max_sequence_length=max_sequence_length,
        architecture=architecture,
        random_global_init=random_global_init,
        global_positional_stride=global_positional_stride,
        keep_first_global_token=keep_first_global_token,
        resize_lsg=resize_lsg,
        model_kwargs=model_kwargs,
        seed=seed,
        dtype=dtype,
        token=token,
    )
    logger.info(
        "Converted %s (%s, %s positions) to %s with %d positions in %.1fs",
        info["initial_model"], info["architecture"], info["source_length"], info["lsg_class"],
        max_sequence_length, time.perf_counter() - start,
    )

    work, marker = _start_work(output)
    try:
        checkpoint = work / "new" / output.name
        checkpoint.mkdir(parents=True)
        start = time.perf_counter()
        save_converted(model, tokenizer, info, checkpoint)
        logger.info("Saved in %.1fs", time.perf_counter() - start)
        del model
        if run_test:
            start = time.perf_counter()
            run_checkpoint_test(checkpoint, max_sequence_length, seed=seed)
            logger.info("Test passed in %.1fs", time.perf_counter() - start)
        _publish(work, output, overwrite)
    finally:
        _discard(work, output)
        marker.close()
    logger.info("Wrote %s", output)

    if push_to_hub:
        try:
            url = push_folder_to_hub(
                output,
                push_to_hub,
                private=private,
                token=token,
                commit_message=f"LSG-BART conversion of {info['initial_model']} to {max_sequence_length} tokens",
            )
        except Exception as error:
            raise RuntimeError(
                f"the checkpoint is complete in {str(output)!r}, but pushing it to {push_to_hub!r} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        logger.info("Pushed to %s", url)
    return output


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def build_parser():
    """The `lsg-bart-convert` argument parser."""
    parser = OneLineErrorParser(
        prog="lsg-bart-convert",
        description="Convert a BART checkpoint (local folder or Hub id) to LSG-BART for long inputs, or resize / "
        "upgrade an LSG-BART checkpoint. The output folder loads with trust_remote_code=True. Converting a "
        "bart-base-sized model takes seconds; errors are one line (exit status 2 for bad arguments).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--initial_model", required=True, help="source checkpoint: a local folder or a Hub model id")
    parser.add_argument(
        "--model_name", required=True,
        help="output folder of the converted checkpoint; never the source or a folder around it, nor the current "
        "or home directory",
    )
    parser.add_argument(
        "--max_sequence_length", type=int, default=4096,
        help="maximum input length of the converted model (position tables are tiled to it)",
    )
    parser.add_argument(
        "--architecture", default=None,
        help=f"architecture to convert to, one of {', '.join(SUPPORTED_ARCHITECTURES)} "
        "(default: the source config's; LSGBart* names are accepted too)",
    )
    parser.add_argument(
        "--random_global_init", action="store_true",
        help="initialise the global tokens from a Gaussian fitted to the token embeddings instead of the bos/mask "
        "token embeddings",
    )
    parser.add_argument(
        "--global_positional_stride", type=int, default=64,
        help="stride used to spread the source's position embeddings over the 512 global embeddings",
    )
    parser.add_argument(
        "--keep_first_global_token", action="store_true",
        help="LSG source: keep its first global token when the global embeddings are re-initialised",
    )
    parser.add_argument(
        "--resize_lsg", action="store_true",
        help="LSG source: only change max_sequence_length, keeping its global embeddings",
    )
    parser.add_argument(
        "--model_kwargs", default="{}",
        help='config fields as a JSON object, e.g. \'{"block_size": 128, "sparse_block_size": 128, '
        '"sparsity_factor": 2, "sparsity_type": "norm", "num_global_tokens": 1}\'; an invalid value is refused '
        "with what is allowed (sparsity_type: norm, pooling, lsh, stride, block_stride, bos_pooling or none)",
    )
    parser.add_argument("--seed", type=int, default=123, help="seed of the random draws (Gaussian rows, new heads)")
    parser.add_argument(
        "--run_test", action="store_true",
        help="before publishing, load the result with each AutoModel* class (trust_remote_code=True) and run an "
        "input through it: max_sequence_length tokens through the checkpoint's own class (its decoder reads 2 "
        f"tokens), {SHORT_TEST_BLOCKS} x block_size tokens through the others, with a progress line per class. "
        "Costs 5 loads of the checkpoint and one full-length encoder pass: for a bart-base-sized model on 2 CPU "
        "cores, about 8 s at 4,096 tokens and 18 s at 16,384",
    )
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="upload the result to this Hub repository")
    parser.add_argument("--private", action="store_true", help="with --push_to_hub: create a private repository")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a non-empty output folder, if it holds a BART / LSG-BART checkpoint and nothing else "
        "(otherwise refused, naming what would have been removed); the old folder goes once the new one is complete",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="dtype of the saved weights (default: the source's)"
    )
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Entry point of `lsg-bart-convert`. Returns the exit status: 0 done, 1 failed, 2 bad arguments (raised as
    `SystemExit` by the parser), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_kwargs = json_object(args.model_kwargs)  # like the path checks convert_checkpoint starts with: no torch
    except ValueError as error:
        parser.error(str(error))

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        output = convert_checkpoint(
            args.initial_model,
            args.model_name,
            max_sequence_length=args.max_sequence_length,
            architecture=args.architecture,
            random_global_init=args.random_global_init,
            global_positional_stride=args.global_positional_stride,
            keep_first_global_token=args.keep_first_global_token,
            resize_lsg=args.resize_lsg,
            model_kwargs=model_kwargs,
            seed=args.seed,
            run_test=args.run_test,
            push_to_hub=args.push_to_hub,
            private=args.private,
            token=args.token,
            overwrite=args.overwrite,
            dtype=args.dtype,
        )
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no output folder was written", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as error:
        print(f"{parser.prog}: error: {one_line(error)}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous_showwarning
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    print(f"Done: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
