#!/usr/bin/env python
"""Fine-tune an LSG-BART checkpoint for long-document classification with `Trainer`.

`LSGBartForSequenceClassification` (loaded through `AutoModelForSequenceClassification` and the checkpoint's remote
code) classifies a document from the decoder state of its last `</s>` token. The arguments follow transformers' text
classification example: `ModelArguments`, `DataTrainingArguments` and every `TrainingArguments` flag (`--output_dir`,
`--do_train`, `--do_eval`, `--do_predict`, `--gradient_checkpointing`, `--bf16`, ...). Data come from `--train_file` /
`--validation_file` / `--test_file` (JSON lines or CSV) or `--dataset_name`, with a text column (optionally a second
one for text pairs) and a label column (strings or integers). Evaluation reports accuracy and macro F1.

The trained model is saved as a self-contained remote-code folder that loads back with
`AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)` or
`pipeline("text-classification", model=path, trust_remote_code=True)`.

    python examples/run_classification.py --model_name_or_path lsg-bart-base-4096 \
        --train_file train.jsonl --validation_file dev.jsonl --text_column text --label_column label \
        --max_seq_length 4096 --output_dir out --do_train --do_eval

Several processes: `torchrun --nproc_per_node 2 examples/run_classification.py ...` or `accelerate launch ...`.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """Which checkpoint to fine-tune."""

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
        metadata={"help": "JSON object of config overrides, e.g. '{\"classifier_dropout\": 0.1}'."},
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={"help": "Name of a dataset (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of that dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Training data, JSON lines or CSV."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, JSON lines or CSV."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, JSON lines or CSV (labels optional)."})
    text_column: str | None = field(default=None, metadata={"help": "Column with the documents; default: 'text'."})
    text_column_2: str | None = field(default=None, metadata={"help": "Second text column, for text pairs."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (strings or integers)."})
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Longest input after tokenisation (longer ones are truncated); default: the model's length."},
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to --max_seq_length instead of to the longest of a batch."}
    )
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
            if path is not None and data_format(path) is None:
                raise ValueError(f"--{name} must be a .json, .jsonl or .csv file, got {path!r}.")


def data_format(path):
    """The `datasets` builder that reads `path` ("json" or "csv"), or None."""
    suffix = path.rsplit(".", 1)[-1].lower()
    return {"json": "json", "jsonl": "json", "csv": "csv"}.get(suffix)


def parse_args(argv=None):
    """(ModelArguments, DataTrainingArguments, TrainingArguments) from `argv` or a single .json file."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def setup_logging(training_args):
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


def load_raw_datasets(data_args, model_args):
    """A `DatasetDict` with the splits found in the files or the named dataset."""
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
    return datasets.load_dataset(formats.pop(), data_files=files, cache_dir=model_args.cache_dir)


def label_names(raw_datasets, label_column):
    """The sorted label values found in the labelled splits."""
    values = set()
    for split in ("train", "validation"):
        if split in raw_datasets and label_column in raw_datasets[split].column_names:
            values.update(raw_datasets[split].unique(label_column))
    values.discard(None)
    if not values:
        raise ValueError(f"No labels found in column {label_column!r} of the train or validation data.")
    return sorted(values, key=lambda value: (str(type(value)), value))


def classification_metrics(predictions, labels, num_labels):
    """Accuracy and macro F1 of integer `predictions` against `labels` (0-1)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    f1_scores = []
    for label in range(num_labels):
        true_positive = np.sum((predictions == label) & (labels == label))
        predicted, actual = np.sum(predictions == label), np.sum(labels == label)
        if predicted + actual > 0:
            f1_scores.append(2 * true_positive / (predicted + actual))
    return {
        "accuracy": float(np.mean(predictions == labels)) if len(labels) else 0.0,
        "f1_macro": float(np.mean(f1_scores)) if f1_scores else 0.0,
    }


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


def main(argv=None, callbacks=None):
    """Run the example with command-line arguments `argv` (default: `sys.argv[1:]`) and extra `TrainerCallback`s.

    Returns the `Trainer`, whose model is the trained one (None when there is nothing to do).
    """
    model_args, data_args, training_args = parse_args(argv)
    setup_logging(training_args)
    logger.warning(
        "Process rank %s, device %s, n_gpu %s, distributed %s, bf16 %s",
        training_args.process_index,
        training_args.device,
        training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
        training_args.bf16,
    )
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

    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        logger.info("Nothing to do: give --do_train, --do_eval or --do_predict.")
        return None
    raw_datasets = load_raw_datasets(data_args, model_args)
    labels = label_names(raw_datasets, data_args.label_column)
    label_to_id = {label: i for i, label in enumerate(labels)}

    common = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }
    config_kwargs = json.loads(model_args.model_kwargs) if model_args.model_kwargs else {}
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path,
        num_labels=len(labels),
        label2id={str(label): i for label, i in label_to_id.items()},
        id2label={i: str(label) for label, i in label_to_id.items()},
        **common,
        **config_kwargs,
    )
    if "lsg" not in type(config).__name__.lower():
        logger.warning(
            "%s is not an LSG checkpoint (config class %s): convert it first with lsg-bart-convert.",
            model_args.model_name_or_path,
            type(config).__name__,
        )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **common)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True, **common
    )
    mean_loss_per_batch(model)

    max_seq_length = data_args.max_seq_length or min(tokenizer.model_max_length, config.max_position_embeddings)
    if max_seq_length > config.max_position_embeddings:
        logger.warning(
            "--max_seq_length=%d exceeds the model's max_position_embeddings=%d; using %d.",
            max_seq_length,
            config.max_position_embeddings,
            config.max_position_embeddings,
        )
        max_seq_length = config.max_position_embeddings

    some_split = next(split for split in ("train", "validation", "test") if split in raw_datasets)
    column_names = raw_datasets[some_split].column_names
    text_column = data_args.text_column or ("text" if "text" in column_names else column_names[0])
    for name, column in (("--text_column", text_column), ("--text_column_2", data_args.text_column_2)):
        if column is not None and column not in column_names:
            raise ValueError(f"{name}={column!r} is not a column of the data: {', '.join(column_names)}.")
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples):
        texts = (examples[text_column],)
        if data_args.text_column_2 is not None:
            texts += (examples[data_args.text_column_2],)
        result = tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)
        if data_args.label_column in examples:
            result["labels"] = [label_to_id.get(label, -100) for label in examples[data_args.label_column]]
        return result

    def prepare(split, max_samples):
        if split not in raw_datasets:
            flag = {"train": "--do_train", "validation": "--do_eval", "test": "--do_predict"}[split]
            raise ValueError(f"{flag} needs a {split} split (give its file or a dataset that has it).")
        dataset = raw_datasets[split]
        if max_samples is not None:
            dataset = dataset.select(range(min(len(dataset), max_samples)))
        with training_args.main_process_first(desc=f"{split} dataset tokenisation"):
            return dataset.map(
                preprocess,
                batched=True,
                num_proc=data_args.preprocessing_num_workers,
                remove_columns=dataset.column_names,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenising the {split} split",
            )

    train_dataset = prepare("train", data_args.max_train_samples) if training_args.do_train else None
    eval_dataset = prepare("validation", data_args.max_eval_samples) if training_args.do_eval else None
    predict_dataset = prepare("test", data_args.max_predict_samples) if training_args.do_predict else None

    def compute_metrics(eval_prediction):
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        return classification_metrics(np.argmax(logits, axis=-1), eval_prediction.label_ids, len(labels))

    data_collator = None
    if not data_args.pad_to_max_length:
        # Inputs longer than two blocks are padded to a multiple of the block size by the model anyway.
        data_collator = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=getattr(config, "block_size", None))

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # weights, config with auto_map and labels, the LSG code files and the tokenizer
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    if training_args.do_eval:
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        if "labels" in predict_dataset.column_names:
            predict_dataset = predict_dataset.remove_columns("labels")
        logits = trainer.predict(predict_dataset, metric_key_prefix="predict").predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        if trainer.is_world_process_zero():
            path = os.path.join(training_args.output_dir, "predict_results.txt")
            with open(path, "w", encoding="utf-8") as f:
                f.write("index\tprediction\n")
                for index, label_id in enumerate(np.argmax(logits, axis=-1)):
                    f.write(f"{index}\t{labels[label_id]}\n")

    return trainer


if __name__ == "__main__":
    main()
