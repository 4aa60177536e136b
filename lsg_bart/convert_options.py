"""What the converter is asked to do, and whether it can be done.

`ConvertOptions` describes every option once: the command line (`build_parser`) and the Python API
(`convert_checkpoint`, `convert_model`) are both made from it, and it checks each option on its own when made.
`plan_conversion` reads the source's config.json and checks the options against it: the LSG settings with the rules
of `LSGBartConfig` (`lsg_settings`), the length, the flags that need an LSG source.

Standard library only (a name that may be a Hub id is checked, and its config.json fetched, with huggingface_hub):
every argument error answers before torch and transformers are imported, which takes seconds.
"""

import argparse
import dataclasses
import difflib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from .checkpoint_test import SHORT_TEST_BLOCKS
from .cli import OneLineErrorParser, json_object, one_line
from .lsg_settings import LSG_DEFAULTS, LSG_FIELDS, SPARSITY_TYPES, check_lsg_settings, fits_in_blocks, is_exactly

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
BART_MODEL_TYPES = ("bart", "lsg_bart")
DTYPES = ("float32", "float16", "bfloat16")  # names of torch dtypes

# The LSG settings a converted model's card lists, in the order users set them.
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
# Fields that only an LSG config has: their presence marks an LSG source (a legacy one has model_type "bart").
LSG_SOURCE_FIELDS = ("sparsity_type", "block_size", "sparse_block_size", "sparsity_factor", "num_global_tokens")

# The config fields `--model_kwargs` may set besides the LSG ones: BartConfig's and PretrainedConfig's on every
# supported transformers (4.46 to 5.x; generation settings belong to generation_config.json, not here). Written out
# because reading them from transformers would import it; tests/test_convert.py checks them against the installed one.
CONFIG_FIELDS = frozenset(
    (
        # BartConfig, and its aliases (attribute_map)
        "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
        "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "encoder_layerdrop", "decoder_layerdrop",
        "activation_function", "dropout", "attention_dropout", "activation_dropout", "classifier_dropout", "init_std",
        "scale_embedding", "use_cache", "is_encoder_decoder", "pad_token_id", "bos_token_id", "eos_token_id",
        "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id", "num_labels",
        "hidden_size", "num_attention_heads", "num_hidden_layers",
        # PretrainedConfig
        "id2label", "label2id", "problem_type", "output_hidden_states", "output_attentions", "return_dict",
        "is_decoder", "tie_word_embeddings", "chunk_size_feed_forward", "add_cross_attention", "tie_encoder_decoder",
        "cross_attention_hidden_size", "finetuning_task", "prefix", "pruned_heads", "sep_token_id",
        "task_specific_params", "tokenizer_class", "torchscript", "tf_legacy_loss", "use_bfloat16",
    )  # fmt: skip
)
# Seconds that the one request looking a source up on the Hub may take (no retries): without network, a mistyped
# folder name that is also a valid Hub id answers at once rather than after the Hub client's retries.
HUB_TIMEOUT = 2.0
# Config fields that the converter sets itself, and the option that sets them.
SET_BY_CONVERTER = {
    "max_position_embeddings": "--max_sequence_length",
    "architectures": "--architecture",
    "dtype": "--dtype",
    "torch_dtype": "--dtype",
}


class ConversionWarning(UserWarning):
    """Something the converter worked around (e.g. a tokenizer without a usable mask token)."""


def option(default, help, /, **command_line):
    """A `ConvertOptions` field: its default, its help text and what else its command-line flag needs."""
    return field(default=default, metadata={"help": help, "command_line": command_line})


@dataclass
class ConvertOptions:
    """Every option of a conversion, for the command line (`build_parser`: one flag per field) and the Python API
    (`convert_checkpoint(initial_model, model_name, ...)` takes these fields as arguments).

    Each option is checked on its own when the options are made (`ValueError` naming it); `plan_conversion` checks
    them against the source. `architecture` is kept as the BART name (an `LSGBart*` name is accepted), `model_kwargs`
    as a dict (a JSON string is parsed), `dtype` as a name (a `torch.dtype` is accepted).
    """

    initial_model: Union[str, Path] = field(
        metadata={"help": "source checkpoint: a local folder or a Hub model id", "command_line": {"required": True}}
    )
    model_name: Optional[Union[str, Path]] = option(
        None,
        "output folder of the converted checkpoint; never the source or a folder around it, nor the current or home "
        "directory",
        required=True,
    )
    max_sequence_length: int = option(
        4096,
        "maximum input length of the converted model (position tables are tiled to it); above 2 x block_size, a "
        "multiple of block_size",
    )
    architecture: Optional[str] = option(
        None,
        f"architecture to convert to, one of {', '.join(SUPPORTED_ARCHITECTURES)} (default: the source config's; "
        "LSGBart* names are accepted too)",
    )
    random_global_init: bool = option(
        False,
        "initialise the global tokens from a Gaussian fitted to the token embeddings instead of the bos/mask token "
        "embeddings",
    )
    global_positional_stride: int = option(
        64, "stride used to spread the source's position embeddings over the 512 global embeddings"
    )
    keep_first_global_token: bool = option(
        False, "LSG source: keep its first global token when the global embeddings are re-initialised"
    )
    resize_lsg: bool = option(False, "LSG source: only change max_sequence_length, keeping its global embeddings")
    model_kwargs: Union[dict, str, None] = option(
        None,
        'config fields as a JSON object, e.g. \'{"block_size": 128, "sparse_block_size": 128, "sparsity_factor": 2, '
        '"sparsity_type": "norm", "num_global_tokens": 1}\'; an invalid value is refused with what is allowed '
        f"(sparsity_type: {', '.join(SPARSITY_TYPES)})",
        default="{}",
    )
    seed: int = option(123, "seed of the random draws (Gaussian rows, heads the source lacks)")
    run_test: bool = option(
        False,
        "before publishing, load the result with each AutoModel* class (trust_remote_code=True) and run an input "
        "through it: max_sequence_length tokens through the checkpoint's own class (its decoder reads 2 tokens), "
        f"{SHORT_TEST_BLOCKS} x block_size tokens through the others, with a progress line per class. Costs 5 loads "
        "of the checkpoint and one full-length encoder pass",
    )
    push_to_hub: Optional[str] = option(None, "upload the result to this Hub repository", metavar="REPO_ID")
    private: bool = option(False, "with --push_to_hub: create a private repository")
    token: Optional[str] = option(None, "Hub token (default: the logged-in one)")
    overwrite: bool = option(
        False,
        "replace a non-empty output folder, if it holds a BART / LSG-BART checkpoint and nothing else (otherwise "
        "refused, naming what would have been removed); the old folder goes once the new one is complete",
    )
    dtype: Optional[str] = option(None, "dtype of the saved weights (default: the source's)", choices=DTYPES)

    def __post_init__(self):
        if not is_exactly(self.max_sequence_length, int) or self.max_sequence_length < 1:
            raise ValueError(f"invalid max_sequence_length={self.max_sequence_length!r}; expected a positive integer")
        stride = self.global_positional_stride
        if not is_exactly(stride, int) or stride < 1:
            raise ValueError(f"invalid global_positional_stride={stride!r}; expected a positive integer")
        if not is_exactly(self.seed, int):
            raise ValueError(f"invalid seed={self.seed!r}; expected an integer")
        if self.architecture is not None:
            self.architecture = bart_architecture(self.architecture, "--architecture")
        if self.dtype is not None:
            dtype = self.dtype if isinstance(self.dtype, str) else str(self.dtype).removeprefix("torch.")
            if dtype not in DTYPES:
                raise ValueError(f"invalid dtype={dtype!r}; expected one of {', '.join(DTYPES)}")
            self.dtype = dtype
        self.model_kwargs = parse_model_kwargs(self.model_kwargs)


def parse_model_kwargs(model_kwargs):
    """`--model_kwargs` as a dict of config fields (a JSON string is parsed), refusing a field that no config has
    and one that the converter sets itself. Their values are checked by `plan_conversion`."""
    if model_kwargs is None:
        return {}
    if isinstance(model_kwargs, str):
        model_kwargs = json_object(model_kwargs)
    if not isinstance(model_kwargs, dict):
        raise ValueError(f"--model_kwargs must be a JSON object (a dict of config fields), got {model_kwargs!r}")
    for key in model_kwargs:
        if key in SET_BY_CONVERTER:
            raise ValueError(f"--model_kwargs sets {key!r}, which the converter sets from {SET_BY_CONVERTER[key]}")
    known = CONFIG_FIELDS | set(LSG_FIELDS)
    unknown = sorted(key for key in model_kwargs if key not in known)
    if unknown:
        guesses = [match for key in unknown for match in difflib.get_close_matches(key, known, n=1)]
        guess = f" (did you mean {', '.join(map(repr, guesses))}?)" if guesses else ""
        raise ValueError(
            f"--model_kwargs has unknown config field(s) {', '.join(map(repr, unknown))}{guess}; the LSG settings are "
            f"{', '.join(LSG_SETTINGS)} (any other LSGBartConfig / BartConfig field is accepted too)"
        )
    return dict(model_kwargs)


def bart_architecture(name, where):
    """The BART architecture that `name` (a BART or an LSG-BART class name) stands for; `where` says where the name
    comes from, for the error."""
    base = name[3:] if isinstance(name, str) and name.startswith("LSGBart") else name
    if base not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r} ({where}); supported: {', '.join(SUPPORTED_ARCHITECTURES)} (or their LSG "
            "names)"
        )
    return base


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default after its help, unless the help says it or there is none (None, False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in action.help:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    """The `lsg-bart-convert` argument parser: one flag per `ConvertOptions` field, with its default and help."""
    parser = OneLineErrorParser(
        prog="lsg-bart-convert",
        description="Convert a BART checkpoint (local folder or Hub id) to LSG-BART for long inputs, or resize / "
        "upgrade an LSG-BART checkpoint. The output folder loads with trust_remote_code=True. Errors are one line "
        "(exit status 2 for bad arguments).",
        formatter_class=_ShowDefaults,
    )
    for option_field in dataclasses.fields(ConvertOptions):
        default = None if option_field.default is dataclasses.MISSING else option_field.default
        flag = {"help": option_field.metadata["help"]}
        if isinstance(default, bool):
            flag["action"] = "store_true"
        else:
            flag.update(default=default, type=int if isinstance(default, int) else str)
        flag.update(option_field.metadata["command_line"])
        parser.add_argument(f"--{option_field.name}", **flag)
    return parser


# ---------------------------------------------------------------------------------------------------------------
# The source, and the options checked against it
# ---------------------------------------------------------------------------------------------------------------


def read_source_config(initial_model, token=None):
    """The source's config.json as a dict, and whether the rest of the source is to be read from the local cache
    only (a Hub id whose files are cached while the Hub cannot be reached, or offline mode). `ValueError` if there
    is none or it is not a BART / LSG-BART config."""
    name = str(initial_model)
    try:
        path, cached_only = _config_file(name, token)
        config_dict = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        reason = one_line(error) or type(error).__name__
        raise ValueError(f"cannot read a model config from {name!r}: {reason}") from None
    model_type = config_dict.get("model_type") if isinstance(config_dict, dict) else None
    if model_type not in BART_MODEL_TYPES:
        raise ValueError(
            f"{name!r} is not a BART checkpoint (model_type={model_type!r}); the converter takes model_type 'bart' "
            "(BART or a legacy LSG-BART) or 'lsg_bart'"
        )
    return config_dict, cached_only


def _config_file(name, token):
    """The path of the config.json of the source `name`, and whether the rest of the source comes from the local
    cache only. `OSError` (one line) when there is none.

    A folder: its config.json. Anything else that is not a valid Hub id (a name starting with `/`, `./`, `../` or
    `~`, with a backslash or more than one `/`): no such local folder, answered without the Hub. A Hub id: looked up
    with one request of at most `HUB_TIMEOUT` seconds, without retries, then downloaded; when the Hub does not
    answer (no network, offline mode), taken from the local cache if it is there."""
    path = Path(name)
    if path.is_dir():
        return path / "config.json", False
    if path.exists():
        raise NotADirectoryError("it is a file, not a checkpoint folder")
    missing = "no such local folder" + _did_you_mean(path)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise FileNotFoundError(missing) from None
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    offline = constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE
    if not offline:
        try:
            get_hf_file_metadata(hf_hub_url(name, "config.json"), token=token, timeout=HUB_TIMEOUT)
        except HfHubHTTPError as error:  # the Hub answered: no such repository or file, or no access to it
            raise FileNotFoundError(f"{missing}, and as a Hub model id: {one_line(error)}") from None
        except Exception as error:  # no answer: name resolution, connection, proxy, timeout
            failure = f"{type(error).__name__}: {one_line(error)}"
            unreachable = f"the Hub ({constants.ENDPOINT}) cannot be reached ({failure})"
        else:
            try:
                return hf_hub_download(name, "config.json", token=token), False
            except Exception as error:  # the Hub stopped answering, or not an OSError in this release
                raise OSError(f"{missing}, and as a Hub model id: {one_line(error)}") from None
    try:
        return hf_hub_download(name, "config.json", token=token, local_files_only=True), True
    except Exception as error:
        reason = one_line(error) if offline else f"{unreachable}, and it is not in the local cache"
        raise FileNotFoundError(f"{missing}, and as a Hub model id: {reason}") from None


def _did_you_mean(path):
    """' (did you mean ...?)' naming the checkpoint folder beside `path` whose name is closest to its own, or ''."""
    try:
        folders = [entry.name for entry in path.parent.iterdir() if (entry / "config.json").is_file()]
    except OSError:
        return ""
    guesses = difflib.get_close_matches(path.name, folders, n=1)
    return f" (did you mean {str(path.parent / guesses[0])!r}?)" if guesses else ""


def is_lsg_config(config_dict):
    """Whether a config.json describes an LSG-BART model (new `lsg_bart` or legacy `bart` with LSG fields)."""
    return config_dict.get("model_type") == "lsg_bart" or any(name in config_dict for name in LSG_SOURCE_FIELDS)


# Source config entries that the new config sets itself (or that transformers adds when it saves).
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


@dataclass(frozen=True)
class ConversionPlan:
    """A conversion checked against its source: what `convert_weights.build_lsg_model` carries out."""

    options: ConvertOptions
    source_config: dict  # the source's config.json
    architecture: str  # the BART architecture converted to its LSG class
    config_values: dict  # the fields of the new LSGBartConfig (LSG settings checked)
    local_files_only: bool = False  # the Hub cannot be reached: the source's files come from the local cache

    @property
    def lsg_source(self):
        """Whether the source is an LSG-BART checkpoint (new or legacy)."""
        return is_lsg_config(self.source_config)

    @property
    def source_length(self):
        """The source's `max_position_embeddings` (None if its config has none)."""
        return self.source_config.get("max_position_embeddings")


def plan_conversion(options):
    """Read the source's config.json and check `options` against it. Returns a `ConversionPlan`; `ValueError` for
    a missing or non-BART source, a flag that needs an LSG source, an LSG source shrunk, invalid LSG settings or a
    length that the block size does not divide. Warns (`ConversionWarning`) when a BART source's positions are cut.
    """
    config_dict, cached_only = read_source_config(options.initial_model, options.token)
    name = str(options.initial_model)
    architecture = options.architecture
    if architecture is None:
        architecture = bart_architecture(
            (config_dict.get("architectures") or [DEFAULT_ARCHITECTURE])[0], "the source config's architecture"
        )
    lsg_source = is_lsg_config(config_dict)
    length, source_length = options.max_sequence_length, config_dict.get("max_position_embeddings")
    if options.resize_lsg and not lsg_source:
        raise ValueError(f"--resize_lsg needs an LSG-BART source; {name!r} is a plain BART checkpoint")
    if options.keep_first_global_token and not lsg_source:
        raise ValueError(
            f"--keep_first_global_token needs an LSG-BART source (one with global tokens); {name!r} is a plain BART "
            "checkpoint"
        )
    if lsg_source and source_length is not None and length < source_length:
        raise ValueError(
            f"max_sequence_length={length} is below the source's {source_length}; an LSG-BART checkpoint can only be "
            f"resized to {source_length} tokens or more"
        )

    values = {key: value for key, value in config_dict.items() if key not in _DROPPED_CONFIG_KEYS}
    values.update(options.model_kwargs)
    settings = {setting: values.get(setting, default) for setting, default in LSG_DEFAULTS.items()}
    try:
        check_lsg_settings(settings)  # the length is checked below, where it is the user's choice
    except ValueError as error:
        raise ValueError(f"invalid LSG settings: {error}") from None
    block_size = settings["block_size"]
    if not fits_in_blocks(length, block_size):
        lower, upper = length // block_size * block_size, (length // block_size + 1) * block_size
        raise ValueError(
            f"invalid LSG settings: max_sequence_length={length} is not a multiple of block_size={block_size}, so an "
            f"input of that length would be padded past the position table; use {lower} or {upper}"
        )
    values.update(max_position_embeddings=length, architectures=[ARCHITECTURES[architecture][0]])

    if not lsg_source and source_length is not None and length < source_length:
        warnings.warn(
            f"max_sequence_length={length} is below the source's {source_length}: the position tables are cut.",
            ConversionWarning,
            stacklevel=2,
        )
    return ConversionPlan(options, config_dict, architecture, values, local_files_only=cached_only)
