"""The converter's work on the weights (LSG-SPEC section 6) and the files it writes.

* Position tables (encoder and decoder): the 2 offset rows are kept, the learned rows are tiled up to
  `max_sequence_length` rows (or cut).
* Global embeddings (512 rows): the source encoder's learned positions brought to 512 rows (every k-th row, or
  Gaussian padding below 512 rows), read column by column with `global_positional_stride`, plus the `bos` embedding
  on row 0 and the `mask` embedding on the other rows, or (`random_global_init`) plus rows sampled from a Gaussian
  fitted to the token embeddings. `resize_lsg` keeps an LSG model's global embeddings and only changes the length.

torch, transformers and the model code are imported where they are first needed, so that importing this module
costs nothing.
"""

import json
import math
import os
import shutil
import warnings
from pathlib import Path

from . import REMOTE_CODE_FILES
from .cli import one_line
from .convert_options import ARCHITECTURES, LSG_SETTINGS, ConversionWarning, ConvertOptions, plan_conversion
from .lsg_settings import MAX_GLOBAL_TOKENS
from .safe_output import TOKENIZER_FILES
from .tokenizer_files import save_tokenizer

POSITION_OFFSET = 2  # BART's learned position tables start with 2 extra rows


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


def positional_global_rows(positions, global_positional_stride=64, generator=None, num_rows=MAX_GLOBAL_TOKENS):
    """The learned position rows `(P, d)` brought to `num_rows` rows and reordered with the stride (LSG-SPEC 6.3).

    P a multiple of 512: every (P/512)-th row; P above 512: cut to a multiple first; P below 512: Gaussian rows
    appended (drawn with `generator`). Then, with `k = floor(P/512)` (1 when padded) and `s = stride // k`, the 512
    rows are seen as a `(512/s) x s` grid read column by column. The stride is a positive integer
    (`ConvertOptions` checks it); `ValueError` when the grid it makes does not divide `num_rows`.
    """
    import torch

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


def uses_random_global_init(random_global_init, mask_token_id, vocab_size):
    """Whether the global tokens get Gaussian rows: when asked, or (with a warning) when the tokenizer has no mask
    token inside the model's vocabulary to give them."""
    if random_global_init:
        return True
    if mask_token_id is not None and 0 <= mask_token_id < vocab_size:
        return False
    reason = "has no mask token" if mask_token_id is None else f"mask id {mask_token_id} is outside the vocabulary"
    warnings.warn(
        f"The tokenizer {reason} (model vocabulary: {vocab_size} tokens); falling back to --random_global_init.",
        ConversionWarning,
        stacklevel=3,
    )
    return True


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
    embedding (`mask_token_id` must be in the vocabulary: see `uses_random_global_init`); with it, rows sampled from
    a Gaussian fitted to the token embeddings are added instead, row 0 being the `bos` embedding.
    """
    rows = positional_global_rows(positions, global_positional_stride, generator)
    table = token_embeddings.float()
    if random_global_init:
        added = sample_like_embeddings(table, rows.shape[0], generator)
    else:
        added = table[mask_token_id].expand_as(rows).clone()
    if bos_token_id is not None and 0 <= bos_token_id < table.shape[0]:
        added[0] = table[bos_token_id]
    else:
        warnings.warn(
            f"No usable bos token id ({bos_token_id!r}); global token 0 gets no bos embedding.",
            ConversionWarning,
            stacklevel=2,
        )
    return rows + added


# ---------------------------------------------------------------------------------------------------------------
# Loading the source
# ---------------------------------------------------------------------------------------------------------------


def _has_tokenizer_files(initial_model, hub):
    """Whether the source ships a tokenizer (transformers would otherwise build an empty one with made-up ids)."""
    if Path(initial_model).is_dir():
        return any((Path(initial_model) / name).is_file() for name in TOKENIZER_FILES)
    from transformers.utils import cached_file

    for name in TOKENIZER_FILES[:3]:
        try:
            if cached_file(str(initial_model), name, **hub, _raise_exceptions_for_missing_entries=False):
                return True
        except OSError:
            return False
    return False


def _load_tokenizer(initial_model, hub):
    from transformers import AutoTokenizer, BartConfig

    if not _has_tokenizer_files(initial_model, hub):
        warnings.warn(
            f"{str(initial_model)!r} has no tokenizer files; the output folder will have none, and the global "
            "tokens get the config's bos id and a random init (no mask token).",
            ConversionWarning,
            stacklevel=3,
        )
        return None
    try:
        # A BART config stands in for the source's: a legacy LSG config's auto_map names a file that is not there.
        return AutoTokenizer.from_pretrained(str(initial_model), **hub, config=BartConfig())
    except Exception as error:  # no tokenizer files, or one transformers cannot build
        warnings.warn(
            f"No tokenizer could be loaded from {str(initial_model)!r} ({type(error).__name__}: {error}); the output "
            "folder will have no tokenizer files.",
            ConversionWarning,
            stacklevel=3,
        )
        return None


def hub_arguments(plan):
    """How transformers is to read the source's files: with the user's token, and from the local cache only when
    the Hub could not be reached for its config (`plan_conversion`), rather than through the Hub client's retries."""
    return {"token": plan.options.token, "local_files_only": plan.local_files_only}


def lsg_class(architecture):
    """The LSG-BART class of a BART architecture name."""
    from . import modeling_lsg_bart

    return getattr(modeling_lsg_bart, ARCHITECTURES[architecture][0])


def _load_source_model(plan):
    import transformers

    from .compat import DTYPE_ARGUMENT
    from .configuration_lsg_bart import LSGBartConfig

    architecture, initial_model = plan.architecture, str(plan.options.initial_model)
    cls = lsg_class(architecture) if plan.lsg_source else getattr(transformers, architecture)
    kwargs = {**hub_arguments(plan), DTYPE_ARGUMENT: "auto", "output_loading_info": True}
    if plan.lsg_source:
        # A legacy config (model_type "bart") is read by this project's config class, whatever its auto_map says.
        kwargs["config"] = LSGBartConfig.from_dict(plan.source_config)
    model, info = cls.from_pretrained(initial_model, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:6]) + (", ..." if len(missing) > 6 else "")
        warnings.warn(
            f"{architecture}: {len(missing)} weight(s) not in {initial_model!r} were initialised randomly (seeded): "
            f"{shown}",
            ConversionWarning,
            stacklevel=3,
        )
    return model.eval()


def _load_generation_config(initial_model, hub, config):
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(initial_model), **hub)
    except (OSError, ValueError):
        return GenerationConfig.from_model_config(config)


def make_lsg_config(plan):
    """The new `LSGBartConfig` of a checked plan: `plan_conversion` checked the LSG settings, the config checks the
    types of the other fields (`ValueError`)."""
    from .configuration_lsg_bart import LSGBartConfig

    try:
        return LSGBartConfig(**plan.config_values)
    except Exception as error:  # huggingface_hub's strict-dataclass type errors
        if type(error).__name__.startswith("StrictDataclass"):
            raise ValueError(f"invalid config field: {one_line(error)}") from None
        raise


# ---------------------------------------------------------------------------------------------------------------
# Conversion in memory
# ---------------------------------------------------------------------------------------------------------------


def convert_model(initial_model, **options):
    """Convert in memory. Takes the fields of `ConvertOptions` (but `model_name`) as keyword arguments. Returns
    `(model, tokenizer, info)`: the LSG model (eval mode), the source tokenizer with `model_max_length =
    max_sequence_length` (or `None` if the source has none), and a dict describing the conversion (used for the
    model card)."""
    return build_lsg_model(plan_conversion(ConvertOptions(initial_model, **options)))


def build_lsg_model(plan):
    """Carry out a checked `ConversionPlan` in memory; returns what `convert_model` returns."""
    import torch

    options, architecture = plan.options, plan.architecture
    config = make_lsg_config(plan)
    torch.manual_seed(options.seed)  # heads that the source lacks are initialised reproducibly
    generator = torch.Generator().manual_seed(options.seed)
    tokenizer = _load_tokenizer(options.initial_model, hub_arguments(plan))
    source = _load_source_model(plan)
    source_dtype = source.dtype
    out_dtype = getattr(torch, options.dtype) if options.dtype is not None else source_dtype
    config.dtype = str(out_dtype).removeprefix("torch.")

    prefix = "" if architecture == "BartModel" else "model."
    state = source.state_dict()
    global_key = f"{prefix}encoder.global_embeddings.weight"
    global_init = "none (decoder-only model)"
    with torch.no_grad():
        if architecture != "BartForCausalLM" and not options.resize_lsg:
            token_embeddings = source.get_input_embeddings().weight
            mask_id = tokenizer.mask_token_id if tokenizer is not None else None
            bos_id = tokenizer.bos_token_id if tokenizer is not None else None
            if bos_id is None:
                bos_id = plan.source_config.get("bos_token_id")
            random_init = uses_random_global_init(options.random_global_init, mask_id, token_embeddings.shape[0])
            new_global = make_global_embeddings(
                state[f"{prefix}encoder.embed_positions.weight"][POSITION_OFFSET:],
                token_embeddings,
                bos_token_id=bos_id,
                mask_token_id=mask_id,
                global_positional_stride=options.global_positional_stride,
                random_global_init=random_init,
                generator=generator,
            )
            global_init = "Gaussian fitted to the token embeddings" if random_init else "bos / mask token embeddings"
            global_init += f" + source positions (stride {options.global_positional_stride})"
            if options.keep_first_global_token:
                new_global[0] = state[global_key][0].float()
                global_init += "; first global token kept from the source"
            state[global_key] = new_global.to(source_dtype)
        elif options.resize_lsg:
            global_init = "kept from the source"
        for side in ("encoder", "decoder"):
            key = f"{prefix}{side}.embed_positions.weight"
            if key in state:
                state[key] = tile_positions(state[key], options.max_sequence_length)

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
    model.generation_config = _load_generation_config(options.initial_model, hub_arguments(plan), config)
    del source

    if tokenizer is not None:
        tokenizer.model_max_length = options.max_sequence_length
        tokenizer.init_kwargs["model_max_length"] = options.max_sequence_length

    info = {
        "initial_model": str(options.initial_model),
        "architecture": architecture,
        "lsg_class": target_class.__name__,
        "auto_class": ARCHITECTURES[architecture][1],
        "pipeline_tag": ARCHITECTURES[architecture][2],
        "source": "LSG-BART" if plan.lsg_source else "BART",
        "legacy_source": plan.lsg_source and plan.source_config.get("model_type") == "bart",
        "source_length": plan.source_length,
        "max_sequence_length": options.max_sequence_length,
        "resize_lsg": options.resize_lsg,
        "global_init": global_init,
        "seed": options.seed,
        "dtype": config.dtype,
    }
    return model, tokenizer, info


# ---------------------------------------------------------------------------------------------------------------
# The checkpoint folder
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
        save_tokenizer(tokenizer, folder)  # with a class name that transformers 4.46 to the newest read
    for pickled in folder.glob("*.bin"):
        pickled.unlink()
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():  # transformers writes the weights readable by the owner only
        path.chmod(0o666 & ~umask)
    (folder / "README.md").write_text(model_card(model.config, info), encoding="utf-8")
