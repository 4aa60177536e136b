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

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    set_seed,
)
from transformers.trainer_utils import get_last_checkpoint

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
        metadata={"help": 'JSON object of config overrides, e.g. \'{"sparsity_type": "pooling", "dropout": 0.0}\'.'},
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    dataset_name: str | None = field(default=None, metadata={"help": "Name of a dataset (datasets library)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of that dataset."})
    text_column: str | None = field(default=None, metadata={"help": "Column with the full texts (documents)."})
    summary_column: str | None = field(default=None, metadata={"help": "Column with the summaries."})
    train_file: str | None = field(default=None, metadata={"help": "Training data, JSON lines or CSV."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation data, JSON lines or CSV."})
    test_file: str | None = field(default=None, metadata={"help": "Test data, JSON lines or CSV."})
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
        if self.val_max_target_length is None:
            self.val_max_target_length = self.max_target_length


def data_format(path):
    """The `datasets` builder that reads `path` ("json" or "csv"), or None."""
    suffix = path.rsplit(".", 1)[-1].lower()
    return {"json": "json", "jsonl": "json", "csv": "csv"}.get(suffix)


def parse_args(argv=None):
    """(ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments) from `argv` or a single .json file."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))
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


def load_model_and_tokenizer(model_args, auto_model_class, **config_kwargs):
    """The LSG checkpoint's config, tokenizer and model, with its remote code."""
    common = {
        "cache_dir": model_args.cache_dir,
        "revision": model_args.model_revision,
        "token": model_args.token,
        "trust_remote_code": model_args.trust_remote_code,
    }
    if model_args.model_kwargs:
        config_kwargs.update(json.loads(model_args.model_kwargs))
    config = AutoConfig.from_pretrained(
        model_args.config_name or model_args.model_name_or_path, **common, **config_kwargs
    )
    if "lsg" not in type(config).__name__.lower() and "lsg" not in str(getattr(config, "auto_map", "")).lower():
        logger.warning(
            "%s is not an LSG checkpoint (config class %s): convert it first with lsg-bart-convert to get long-input "
            "attention.",
            model_args.model_name_or_path,
            type(config).__name__,
        )
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path, **common)
    model = auto_model_class.from_pretrained(model_args.model_name_or_path, config=config, **common)
    return config, tokenizer, model


def source_length(data_args, tokenizer, config):
    """--max_source_length, or the model's length; never more than the model's position table."""
    model_length = config.max_position_embeddings
    length = data_args.max_source_length or min(tokenizer.model_max_length, model_length)
    if length > model_length:
        logger.warning(
            "--max_source_length=%d exceeds the model's max_position_embeddings=%d; using %d.",
            length,
            model_length,
            model_length,
        )
        length = model_length
    return length


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

    Returns the `Seq2SeqTrainer`, whose model is the trained one (None when there is nothing to do).
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

    raw_datasets = load_raw_datasets(data_args, model_args)
    config, tokenizer, model = load_model_and_tokenizer(model_args, AutoModelForSeq2SeqLM)
    if model.config.decoder_start_token_id is None:
        raise ValueError("The model's config needs a decoder_start_token_id.")
    mean_loss_per_batch(model)
    max_source_length = source_length(data_args, tokenizer, config)

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
    for name, column in (("--text_column", text_column), ("--summary_column", summary_column)):
        if column not in column_names:
            raise ValueError(f"{name}={column!r} is not a column of the data: {', '.join(column_names)}.")

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
        if split not in raw_datasets:
            flag = {"train": "--do_train", "validation": "--do_eval", "test": "--do_predict"}[split]
            raise ValueError(f"{flag} needs a {split} split (give its file or a dataset that has it).")
        dataset = raw_datasets[split]
        if max_samples is not None:
            dataset = dataset.select(range(min(len(dataset), max_samples)))
        with training_args.main_process_first(desc=f"{split} dataset tokenisation"):
            return dataset.map(
                preprocess,
                fn_kwargs={"max_target_length": max_target_length},
                batched=True,
                num_proc=data_args.preprocessing_num_workers,
                remove_columns=dataset.column_names,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=f"Tokenising the {split} split",
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

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=data_collator,
        compute_metrics=build_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
        callbacks=callbacks,
    )

    if training_args.do_train:
        checkpoint = training_args.resume_from_checkpoint or last_checkpoint
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()  # weights, config with auto_map, the LSG code files and the tokenizer
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
