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

import logging
import os
import sys
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.py, also when imported from a file path
import common  # noqa: E402
from common import BaseDataArguments, ModelArguments  # noqa: E402

from lsg_bart.cli import input_length  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments(BaseDataArguments):
    """What data to train and evaluate on."""

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

    def __post_init__(self):
        super().__post_init__()
        common.check_positive(self, ("max_seq_length",))


def parse_args(argv=None):
    """(ModelArguments, DataTrainingArguments, TrainingArguments) from `argv` or a single .json file."""
    return common.parse_args((ModelArguments, DataTrainingArguments, TrainingArguments), argv)


def label_names(raw_datasets, label_column):
    """The sorted label values found in the labelled splits."""
    values = set()
    for split in ("train", "validation"):
        if split in raw_datasets and label_column in raw_datasets[split].column_names:
            values.update(raw_datasets[split].unique(label_column))
    values.discard(None)
    if not values:
        columns = dict.fromkeys(name for split in raw_datasets.values() for name in split.column_names)
        raise ValueError(
            f"--label_column={label_column!r}: no labels found in that column of the train or validation data "
            f"(columns: {', '.join(columns)})."
        )
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


def main(argv=None, callbacks=None):
    """Run the example with command-line arguments `argv` (default: `sys.argv[1:]`) and extra `TrainerCallback`s.

    Returns the `Trainer`, whose model is the trained one (None when there is nothing to do).
    """
    model_args, data_args, training_args = parse_args(argv)
    common.load_config(model_args)  # a bad checkpoint or --model_kwargs stops the run before the data are read
    last_checkpoint = common.start_run(training_args, logger)

    if not (training_args.do_train or training_args.do_eval or training_args.do_predict):
        logger.info("Nothing to do: give --do_train, --do_eval or --do_predict.")
        return None
    raw_datasets = common.load_raw_datasets(data_args, model_args)
    labels = label_names(raw_datasets, data_args.label_column)
    label_to_id = {label: i for i, label in enumerate(labels)}

    some_split = next(split for split in ("train", "validation", "test") if split in raw_datasets)
    column_names = raw_datasets[some_split].column_names
    text_column = data_args.text_column or ("text" if "text" in column_names else column_names[0])
    common.check_columns(column_names, {"--text_column": text_column, "--text_column_2": data_args.text_column_2})

    config = common.load_config(
        model_args,
        num_labels=len(labels),
        label2id={str(label): i for label, i in label_to_id.items()},
        id2label={i: str(label) for label, i in label_to_id.items()},
    )
    tokenizer, model = common.load_model_and_tokenizer(
        model_args, config, AutoModelForSequenceClassification, logger, ignore_mismatched_sizes=True
    )
    max_seq_length = input_length(data_args.max_seq_length, "--max_seq_length", tokenizer, config, logger)
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
        return common.tokenize_split(raw_datasets, split, max_samples, preprocess, data_args, training_args)

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

    trainer = common.train_and_evaluate(
        Trainer, model, tokenizer, training_args, train_dataset, eval_dataset, last_checkpoint,
        data_collator=data_collator, compute_metrics=compute_metrics, callbacks=callbacks,
    )  # fmt: skip

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
