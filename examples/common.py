"""What the fine-tuning examples share: arguments, logging, data and checkpoint loading, the Trainer's loss setting.

Imported by `run_summarization.py` and `run_classification.py`, which put their own folder on `sys.path` first (so
this works with `python`, `torchrun` and `accelerate launch`, and when the scripts are imported from a file path).
"""

import logging
import os
import sys
from dataclasses import dataclass, field, fields

import datasets
import transformers
from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed
from transformers.trainer_utils import get_last_checkpoint

from lsg_bart.cli import OneLineErrors, json_object

SPLIT_FLAGS = {"train": "--do_train", "validation": "--do_eval", "test": "--do_predict"}
SPLIT_FILE_FLAGS = {"train": "--train_file", "validation": "--validation_file", "test": "--test_file"}


@dataclass
class ModelArguments:
    """Which checkpoint to fine-tune, and config fields to override."""

    model_name_or_path: str = field(
        metadata={"help": "Path or Hub id of an LSG-BART checkpoint (see lsg-bart-convert)."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache files downloaded from the Hub."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the checkpoint."})
    token: str | None = field(default=None, metadata={"help": "Hub token, for private checkpoints or datasets."})
    trust_remote_code: bool = field(
        default=True,
        metadata={"help": "Run the checkpoint's own modelling code (LSG checkpoints ship it; needed to load them)."},
    )
    model_kwargs: str | None = field(
        default=None,
        metadata={"help": 'JSON object of config overrides, e.g. \'{"sparsity_type": "pooling", "dropout": 0.0}\'.'},
    )


@dataclass
class BaseDataArguments:
    """Where the data come from and how many examples to keep (each example adds its columns and lengths)."""

    dataset_name: str | None = field(default=None, metadata={"help": "Name of a dataset (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of that dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training data, JSON lines or CSV."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, JSON lines or CSV."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, JSON lines or CSV."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only this many validation examples."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep only this many test examples."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Tokenise again instead of using the cache."})

    def __post_init__(self):
        if (
            self.dataset_name is None
            and self.train_file is None
            and self.validation_file is None
            and self.test_file is None
        ):
            raise ValueError("Give --dataset_name or at least one of --train_file, --validation_file, --test_file.")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if data_format(path) is None:
                raise ValueError(f"--{name} must be a .json, .jsonl or .csv file, got {path!r}.")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--{name} {path!r} is not a file (it does not exist or is a folder).")
        check_positive(self, ("max_train_samples", "max_eval_samples", "max_predict_samples"))


def check_positive(arguments, names):
    """`ValueError` naming the flag if one of the `names` fields of `arguments` is set and not a positive integer."""
    for name in names:
        value = getattr(arguments, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}.")


def data_format(path):
    """The `datasets` builder that reads `path` ("json" or "csv"), or None."""
    suffix = path.rsplit(".", 1)[-1].lower()
    return {"json": "json", "jsonl": "json", "csv": "csv"}.get(suffix)


# transformers 5 renamed these TrainingArguments fields and warns on the old names, which the examples document
# because every supported transformers knows them.
RENAMED_TRAINING_FIELDS = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def accelerator_available():
    """Whether torch sees a GPU or another accelerator (CUDA, XPU, MPS, ...)."""
    import torch

    if hasattr(torch, "accelerator"):  # torch 2.6 and later
        return torch.accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


def choose_precision(values):
    """Make --bf16 (`values`: the training arguments as a dict, changed in place) run on this machine, where
    transformers would refuse it ("Your setup doesn't support bf16/gpu"). Returns a line saying what was chosen, or
    None when nothing changed.

    Without a GPU the run goes to the CPU (`use_cpu`), in bfloat16 mixed precision where the CPU has bfloat16
    instructions (AVX-512 BF16 or AMX) and in float32 elsewhere, where bfloat16 is emulated and several times
    slower. A GPU without bfloat16 (before Ampere) trains in float32. An explicit --use_cpu keeps --bf16 as given.
    """
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    asked = [name for name in ("bf16", "bf16_full_eval") if values.get(name)]
    if not asked or values.get("use_cpu") or is_torch_bf16_gpu_available() or is_torch_xla_available():
        return None
    flags = " and ".join(f"--{name}" for name in asked)
    if accelerator_available():
        values.update(dict.fromkeys(asked, False))
        return f"{flags}: this accelerator does not support bfloat16; training in float32 instead."
    from lsg_bart.lsg_kernels import CPU_BF16

    values["use_cpu"] = True
    if CPU_BF16:
        return f"{flags}: no GPU here; training on the CPU (use_cpu) in bfloat16 mixed precision."
    values.update(dict.fromkeys(asked, False))
    return (
        f"{flags}: no GPU here, and this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), on which bfloat16 "
        "runs several times slower than float32: training on the CPU (use_cpu) in float32 instead."
    )


class ArgumentParser(OneLineErrors, HfArgumentParser):
    """`HfArgumentParser` whose errors are one line (the usage, every TrainingArguments flag, is for --help).

    Before the TrainingArguments are built, whether from the command line or from a .json file: the renamed fields
    (`RENAMED_TRAINING_FIELDS`) go to their new names where the installed transformers has them, and --bf16 is made
    to run on this machine (`choose_precision`; its line, if any, is kept in `notes`)."""

    notes = ()

    def _prepare_training_values(self, values):
        for old, new in RENAMED_TRAINING_FIELDS.items():
            if values.get(old) is not None and new in values and values[new] is None:
                values[new], values[old] = values[old], None
        if "use_cpu" in values:  # the parser holds TrainingArguments
            note = choose_precision(values)
            self.notes = (note,) if note else ()

    def parse_known_args(self, args=None, namespace=None):
        namespace, remaining = super().parse_known_args(args, namespace)
        self._prepare_training_values(vars(namespace))
        return namespace, remaining

    def parse_dict(self, args, allow_extra_keys=False):
        field_names = {f.name for dtype in self.dataclass_types for f in fields(dtype)}
        args = dict(args)
        for name in set(RENAMED_TRAINING_FIELDS.values()) | {"use_cpu"}:
            if name in field_names:
                args.setdefault(name, None if name != "use_cpu" else False)
        self._prepare_training_values(args)
        return super().parse_dict(args, allow_extra_keys=allow_extra_keys)


def parse_args(dataclass_types, argv=None):
    """The `dataclass_types` filled from `argv` (default: `sys.argv[1:]`) or from a single .json file. The training
    arguments' `example_notes` hold what `ArgumentParser` changed (logged by `start_run`)."""
    parser = ArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        parsed = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    else:
        parsed = parser.parse_args_into_dataclasses(args=argv)
    parsed[-1].example_notes = parser.notes
    return parsed


def setup_logging(training_args, logger):
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def start_run(training_args, logger):
    """Set up logging (on the example's `logger`) and the seed; the checkpoint to resume from, or None."""
    setup_logging(training_args, logger)
    logger.warning(
        "Process rank %s, device %s, n_gpu %s, distributed %s, bf16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.bf16,
    )
    for note in getattr(training_args, "example_notes", ()):
        logger.warning(note)
    logger.info("Training parameters %s", training_args)

    last_checkpoint = None
    if (
        training_args.do_train
        and os.path.isdir(training_args.output_dir)
        and training_args.resume_from_checkpoint is None
    ):
        last_checkpoint = get_last_checkpoint(training_args.output_dir)
        if last_checkpoint is not None:
            logger.info("Resuming from %s; give another --output_dir to start afresh.", last_checkpoint)
    set_seed(training_args.seed)
    return last_checkpoint


FORMAT_NAMES = {"json": "JSON lines (one JSON object per line)", "csv": "CSV with a header row"}


def load_raw_datasets(data_args, model_args):
    """A `DatasetDict` with the splits found in the files or the named dataset. A file that cannot be read gets a
    `ValueError` naming its flag and path."""
    if data_args.dataset_name is not None:
        return datasets.load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
    files = {
        split: path
        for split, path in (
            ("train", data_args.train_file),
            ("validation", data_args.validation_file),
            ("test", data_args.test_file),
        )
        if path is not None
    }
    formats = {data_format(path) for path in files.values()}
    if len(formats) > 1:
        raise ValueError("Give all data files in one format (JSON lines or CSV).")
    builder = formats.pop()
    splits = {}
    for split, path in files.items():  # one at a time, so that an error names its file
        try:
            splits[split] = datasets.load_dataset(builder, data_files={split: path}, cache_dir=model_args.cache_dir)[
                split
            ]
        except datasets.exceptions.DatasetGenerationError as error:
            cause = error.__cause__ or error
            raise ValueError(
                f"{SPLIT_FILE_FLAGS[split]} {path!r} cannot be read as {FORMAT_NAMES[builder]}: {cause}"
            ) from error
        if not splits[split].column_names:
            raise ValueError(f"{SPLIT_FILE_FLAGS[split]} {path!r} holds no data; expected {FORMAT_NAMES[builder]}.")
    return datasets.DatasetDict(splits)


def check_columns(column_names, columns):
    """Raise if a column named by a flag (`columns`: flag -> column or None) is not in the data."""
    for name, column in columns.items():
        if column is not None and column not in column_names:
            raise ValueError(f"{name}={column!r} is not a column of the data: {', '.join(column_names)}.")


def tokenize_split(raw_datasets, split, max_samples, preprocess, data_args, training_args, fn_kwargs=None):
    """`raw_datasets[split]`, cut to `max_samples` and tokenised by `preprocess` (batched, once per machine)."""
    if split not in raw_datasets:
        raise ValueError(f"{SPLIT_FLAGS[split]} needs a {split} split (give its file or a dataset that has it).")
    dataset = raw_datasets[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), max_samples)))
    with training_args.main_process_first(desc=f"{split} dataset tokenisation"):
        return dataset.map(
            preprocess,
            fn_kwargs=fn_kwargs,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=dataset.column_names,
            load_from_cache_file=not data_args.overwrite_cache,
            desc=f"Tokenising the {split} split",
        )


def _hub_options(model_args):
    return {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }


def load_config(model_args, **config_kwargs):
    """The checkpoint's config with `config_kwargs` and --model_kwargs, read before anything else so that a bad
    checkpoint or setting stops the run before the data are read or a file is written.

    Raises `OSError` naming --model_name_or_path (or --config_name) when no config can be loaded from it,
    `ValueError` naming the fields of --model_kwargs that the config does not have, and the config's own
    `ValueError` for an invalid value (an LSG config checks every LSG field, e.g. `sparsity_type` or `block_size`).
    """
    if model_args.config_name:
        flag, name = "--config_name", model_args.config_name
    else:
        flag, name = "--model_name_or_path", model_args.model_name_or_path
    overrides = json_object(model_args.model_kwargs)
    try:
        config = AutoConfig.from_pretrained(name, **_hub_options(model_args))
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OSError(
            f"{flag} {name!r}: no model config could be loaded ({reason}); expected a checkpoint folder with a "
            "config.json (such as one written by lsg-bart-convert) or a Hub model id."
        ) from error
    unknown = sorted(key for key in overrides if not hasattr(config, key))
    if unknown:  # from_pretrained would drop them without a word
        raise ValueError(
            f"--model_kwargs: {', '.join(map(repr, unknown))} "
            f"{'is not a field' if len(unknown) == 1 else 'are not fields'} of {type(config).__name__} (the LSG "
            "settings: block_size, sparse_block_size, sparsity_factor, "
            "sparsity_type, num_global_tokens, ...)."
        )
    if not config_kwargs and not overrides:
        return config
    return AutoConfig.from_pretrained(name, **_hub_options(model_args), **config_kwargs, **overrides)


def load_model_and_tokenizer(model_args, config, auto_model_class, logger, **model_kwargs):
    """The LSG checkpoint's tokenizer and model (with `config`, from `load_config`), with its remote code;
    `model_kwargs` go to the model's `from_pretrained`. The model's loss is marked as a per-batch mean."""
    if "lsg" not in type(config).__name__.lower() and "lsg" not in str(getattr(config, "auto_map", "")).lower():
        logger.warning(
            "%s is not an LSG checkpoint (config class %s): convert it first with lsg-bart-convert to get long-input "
            "attention.",
            model_args.model_name_or_path,
            type(config).__name__,
        )
    options = _hub_options(model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **options)
    model = auto_model_class.from_pretrained(model_args.model_name_or_path, config=config, **options, **model_kwargs)
    mean_loss_per_batch(model)
    return tokenizer, model


def mean_loss_per_batch(model):
    """Tell the Trainer that the model's loss is a mean over its own batch.

    BART's heads return the mean loss of the batch they see and ignore `num_items_in_batch`, but their `forward`
    takes `**kwargs`, from which transformers 5's Trainer concludes that the loss is normalised by the token count of
    the whole step. It then multiplies the loss by the number of processes (DDP) and skips the division by
    `gradient_accumulation_steps`: logged losses and gradients come out that many times too large. Models that
    declare `accepts_loss_kwargs` themselves are left alone.
    """
    if not hasattr(model, "accepts_loss_kwargs"):
        model.accepts_loss_kwargs = False


def train_and_evaluate(trainer_class, model, tokenizer, training_args, train_dataset, eval_dataset, last_checkpoint,
                       **trainer_kwargs):
    """A `trainer_class` (`Trainer` or `Seq2SeqTrainer`) for the example's model, tokenizer and datasets
    (`trainer_kwargs`: the collator, metrics and callbacks); then --do_train (saving the model, metrics and state)
    and --do_eval, as transformers' examples do. Returns the trainer, for --do_predict."""
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # weights, config with auto_map (and labels), the LSG code files and the tokenizer
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate(metric_key_prefix="eval")
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer
