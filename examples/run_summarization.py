#!/usr/bin/env python
"""Fine-tune an LSG-BART checkpoint for summarisation with `Seq2SeqTrainer`.

The arguments follow transformers' own summarisation example: `ModelArguments`, `DataTrainingArguments` and every
`Seq2SeqTrainingArguments` flag (`--output_dir`, `--do_train`, `--do_eval`, `--do_predict`, `--predict_with_generate`,
`--gradient_checkpointing`, `--bf16`, `--max_steps`, ...). Data come from `--train_file` / `--validation_file` /
`--test_file` (JSON lines or CSV) or from `--dataset_name`. Evaluation reports ROUGE (the `rouge-score` package).

The trained model is saved as a self-contained remote-code folder (the two LSG code files, `auto_map`, weights and
tokenizer) that loads back with `AutoModelForSeq2SeqLM.from_pretrained(path, trust_remote_code=True)`.

One machine:

    python examples/run_summarization.py --model_name_or_path lsg-bart-base-4096 \
        --train_file train.jsonl --validation_file dev.jsonl --text_column article --summary_column abstract \
        --max_source_length 4096 --max_target_length 256 --output_dir out --do_train --do_eval --predict_with_generate

Several processes (DDP), unchanged:

    torchrun --nproc_per_node 2 examples/run_summarization.py ...
    accelerate launch --num_processes 2 examples/run_summarization.py ...
"""

import logging
import os
import re
import sys
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.py, also when imported from a file path
import common  # noqa: E402
from common import BaseDataArguments, ModelArguments  # noqa: E402

from lsg_bart.cli import input_length  # noqa: E402

logger = logging.getLogger(__name__)

# Column names of a few public long-document summarisation datasets, used when the columns are not given.
SUMMARIZATION_COLUMNS = {
    "ccdv/arxiv-summarization": ("article", "abstract"),
    "ccdv/pubmed-summarization": ("article", "abstract"),
    "ccdv/govreport-summarization": ("report", "summary"),
    "ccdv/mediasum": ("document", "summary"),
    "ccdv/WCEP-10": ("document", "summary"),
    "ccdv/multi_news": ("document", "summary"),
    "cnn_dailymail": ("article", "highlights"),
    "abisee/cnn_dailymail": ("article", "highlights"),
    "xsum": ("document", "summary"),
    "EdinburghNLP/xsum": ("document", "summary"),
}


@dataclass
class DataTrainingArguments(BaseDataArguments):
    """What data to train and evaluate on."""

    text_column: str | None = field(default=None, metadata={"help": "Column with the full texts (documents)."})
    summary_column: str | None = field(default=None, metadata={"help": "Column with the summaries."})
    max_source_length: int | None = field(
        default=None,
        metadata={"help": "Longest input after tokenisation (longer ones are truncated); default: the model's length."},
    )
    max_target_length: int = field(default=256, metadata={"help": "Longest target summary after tokenisation."})
    val_max_target_length: int | None = field(
        default=None,
        metadata={"help": "Longest generated summary in evaluation; default: --max_target_length."},
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to --max_source_length instead of to the longest of a batch."}
    )
    num_beams: int | None = field(default=None, metadata={"help": "Beam size for --predict_with_generate."})
    ignore_pad_token_for_loss: bool = field(
        default=True, metadata={"help": "Leave padding of the labels out of the loss."}
    )
    source_prefix: str = field(default="", metadata={"help": "Text put before every input."})

    def __post_init__(self):
        super().__post_init__()
        common.check_positive(self, ("max_source_length", "max_target_length", "val_max_target_length", "num_beams"))
        if self.val_max_target_length is None:
            self.val_max_target_length = self.max_target_length


def parse_args(argv=None):
    """(ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments) from `argv` or a single .json file."""
    return common.parse_args((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments), argv)


def sentences(text):
    """Text cut into sentences, one per line, as ROUGE-Lsum expects (no tokenizer download needed)."""
    return "\n".join(part.strip() for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part.strip())


def rouge_scores(predictions, references):
    """Mean ROUGE-1/2/L/Lsum F-measures (0-100) of `predictions` against `references`."""
    from rouge_score import rouge_scorer

    keys = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
    scorer = rouge_scorer.RougeScorer(keys, use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(sentences(reference), sentences(prediction))
        for key in keys:
            totals[key] += scores[key].fmeasure
    count = max(len(predictions), 1)
    return {key: round(100 * total / count, 4) for key, total in totals.items()}


def build_compute_metrics(tokenizer):
    def compute_metrics(eval_preds):
        predictions, labels = eval_preds
        if isinstance(predictions, tuple):
            predictions = predictions[0]
        predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        decoded_predictions = [text.strip() for text in tokenizer.batch_decode(predictions, skip_special_tokens=True)]
        decoded_labels = [text.strip() for text in tokenizer.batch_decode(labels, skip_special_tokens=True)]
        metrics = rouge_scores(decoded_predictions, decoded_labels)
        metrics["gen_len"] = float(np.mean(np.count_nonzero(predictions != tokenizer.pad_token_id, axis=1)))
        return metrics

    return compute_metrics


def main(argv=None, callbacks=None):
    """Run the example with command-line arguments `argv` (default: `sys.argv[1:]`) and extra `TrainerCallback`s.

    Returns the `Seq2SeqTrainer`, whose model is the trained one (None when there is nothing to do).
    """
    model_args, data_args, training_args = parse_args(argv)
    config = common.load_config(model_args)
    if config.decoder_start_token_id is None:
        raise ValueError("The model's config needs a decoder_start_token_id.")
    last_checkpoint = common.start_run(training_args, logger)

    raw_datasets = common.load_raw_datasets(data_args, model_args)
    if training_args.do_train:
        column_names = raw_datasets["train"].column_names
    elif training_args.do_eval:
        column_names = raw_datasets["validation"].column_names
    elif training_args.do_predict:
        column_names = raw_datasets["test"].column_names
    else:
        logger.info("Nothing to do: give --do_train, --do_eval or --do_predict.")
        return None
    default_text, default_summary = SUMMARIZATION_COLUMNS.get(data_args.dataset_name, column_names[:2])
    text_column = data_args.text_column or default_text
    summary_column = data_args.summary_column or default_summary
    common.check_columns(column_names, {"--text_column": text_column, "--summary_column": summary_column})
    tokenizer, model = common.load_model_and_tokenizer(model_args, config, AutoModelForSeq2SeqLM, logger)
    max_source_length = input_length(data_args.max_source_length, "--max_source_length", tokenizer, config, logger)

    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples, max_target_length):
        pairs = [
            (text, summary)
            for text, summary in zip(examples[text_column], examples[summary_column])
            if text is not None and summary is not None
        ]
        inputs = [data_args.source_prefix + text for text, _ in pairs]
        model_inputs = tokenizer(inputs, max_length=max_source_length, padding=padding, truncation=True)
        labels = tokenizer(
            text_target=[summary for _, summary in pairs],
            max_length=max_target_length,
            padding=padding,
            truncation=True,
        )["input_ids"]
        if padding == "max_length" and data_args.ignore_pad_token_for_loss:
            labels = [[(t if t != tokenizer.pad_token_id else -100) for t in label] for label in labels]
        model_inputs["labels"] = labels
        return model_inputs

    def prepare(split, max_samples, max_target_length):
        return common.tokenize_split(
            raw_datasets,
            split,
            max_samples,
            preprocess,
            data_args,
            training_args,
            fn_kwargs={"max_target_length": max_target_length},
        )

    train_dataset = (
        prepare("train", data_args.max_train_samples, data_args.max_target_length) if training_args.do_train else None
    )
    eval_dataset = (
        prepare("validation", data_args.max_eval_samples, data_args.val_max_target_length)
        if training_args.do_eval
        else None
    )
    predict_dataset = (
        prepare("test", data_args.max_predict_samples, data_args.val_max_target_length)
        if training_args.do_predict
        else None
    )

    data_collator = DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        label_pad_token_id=-100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id,
        # Inputs longer than two blocks are padded to a multiple of the block size by the model anyway.
        pad_to_multiple_of=getattr(config, "block_size", None) if not data_args.pad_to_max_length else None,
    )
    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.val_max_target_length
    if training_args.generation_num_beams is None:
        training_args.generation_num_beams = data_args.num_beams

    compute_metrics = build_compute_metrics(tokenizer) if training_args.predict_with_generate else None
    trainer = common.train_and_evaluate(
        Seq2SeqTrainer, model, tokenizer, training_args, train_dataset, eval_dataset, last_checkpoint,
        data_collator=data_collator, compute_metrics=compute_metrics, callbacks=callbacks,
    )  # fmt: skip

    if training_args.do_predict:
        results = trainer.predict(predict_dataset, metric_key_prefix="predict")
        metrics = results.metrics
        metrics["predict_samples"] = len(predict_dataset)
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        if trainer.is_world_process_zero() and training_args.predict_with_generate:
            predictions = np.where(results.predictions != -100, results.predictions, tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(predictions, skip_special_tokens=True)
            with open(os.path.join(training_args.output_dir, "generated_predictions.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(text.strip().replace("\n", " ") for text in texts) + "\n")

    return trainer


if __name__ == "__main__":
    main()
