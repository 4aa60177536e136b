#!/usr/bin/env python
"""Summarise long text files (or standard input) with an LSG-BART checkpoint.

Each document is truncated to the model's length (`max_position_embeddings`, or `--max_source_length`), summarised
with beam search, and written to standard output, to `--output_dir` (one `<name>.summary.txt` per file) or as JSON
lines (`--jsonl`). A progress bar on standard error follows the documents.

    python examples/summarize.py --model path/to/lsg-bart-checkpoint report1.txt report2.txt
    cat report.txt | python examples/summarize.py --model path/to/checkpoint --num_beams 4 --max_new_tokens 256
    python examples/summarize.py --model ckpt --output_dir summaries --batch_size 4 docs/*.txt
"""

import argparse
import json
import logging
import os
import sys

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from lsg_bart.cli import OneLineErrorParser

logger = logging.getLogger("summarize")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser():
    """The command-line parser of summarize.py."""
    parser = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="Text files to summarise; none or '-' reads standard input.")
    parser.add_argument("--model", required=True, help="Path or Hub id of an LSG-BART summarisation checkpoint.")
    parser.add_argument(
        "--max_source_length",
        type=int,
        default=None,
        help="Tokens kept of each document (default and maximum: the model's max_position_embeddings).",
    )
    generation = parser.add_argument_group("generation (beam search)")
    generation.add_argument("--num_beams", type=int, default=4, help="Beam size (1: greedy).")
    generation.add_argument("--max_new_tokens", type=int, default=256, help="Longest summary, in tokens.")
    generation.add_argument("--min_new_tokens", type=int, default=None, help="Shortest summary, in tokens.")
    generation.add_argument("--length_penalty", type=float, default=None, help=">1 favours longer summaries.")
    generation.add_argument("--no_repeat_ngram_size", type=int, default=None, help="Forbid repeating n-grams.")
    generation.add_argument("--repetition_penalty", type=float, default=None, help="Penalty on repeated tokens.")
    generation.add_argument(
        "--early_stopping", action="store_true", help="Stop the beam search once num_beams candidates have ended."
    )
    parser.add_argument("--batch_size", type=int, default=1, help="Documents per generate() call.")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available).")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="Weights' dtype.")
    parser.add_argument("--output_dir", default=None, help="Write <name>.summary.txt files here.")
    parser.add_argument("--jsonl", action="store_true", help="Print one JSON object per document.")
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar.")
    parser.add_argument(
        "--trust_remote_code",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Run the checkpoint's own modelling code (needed for LSG checkpoints).",
    )
    return parser


def load(model_name_or_path, device=None, dtype=torch.float32, trust_remote_code=True):
    """The checkpoint's model (eval mode, on `device`) and tokenizer."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tokenizer


def source_length(model, max_source_length=None):
    """Tokens kept of each document: `max_source_length`, at most the model's position table."""
    model_length = model.config.max_position_embeddings
    if max_source_length is None:
        return model_length
    if max_source_length > model_length:
        logger.warning(
            "--max_source_length=%d exceeds the model's length %d; using %d.",
            max_source_length,
            model_length,
            model_length,
        )
    return min(max_source_length, model_length)


def generation_kwargs(args):
    """The generate() arguments given on the command line."""
    kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    for name in ("min_new_tokens", "length_penalty", "no_repeat_ngram_size", "repetition_penalty"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.early_stopping:
        kwargs["early_stopping"] = True
    return kwargs


@torch.inference_mode()
def summarize(texts, model, tokenizer, max_source_length=None, batch_size=1, progress=True, **generate_kwargs):
    """Summaries of `texts`, in order, as dicts: `summary`, `input_tokens` (kept), `truncated` (bool).

    Each text is truncated to `max_source_length` tokens (default: the model's length); `generate_kwargs` go to
    `model.generate` (beam search settings and lengths).
    """
    length = source_length(model, max_source_length)
    results = []
    with tqdm(total=len(texts), desc="Summarising", unit="doc", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            full_lengths = [len(ids) for ids in tokenizer(batch, truncation=False, verbose=False)["input_ids"]]
            inputs = tokenizer(batch, truncation=True, max_length=length, padding=True, return_tensors="pt")
            inputs = inputs.to(model.device)
            output_ids = model.generate(**inputs, **generate_kwargs)
            summaries = tokenizer.batch_decode(output_ids, skip_special_tokens=True)
            kept = inputs["attention_mask"].sum(dim=1).tolist()
            for summary, full_length, kept_length in zip(summaries, full_lengths, kept):
                results.append(
                    {
                        "summary": summary.strip(),
                        "input_tokens": int(kept_length),
                        "truncated": full_length > kept_length,
                    }
                )
            bar.update(len(batch))
    return results


def reads_stdin(files):
    """Whether the documents come from standard input (no files, or '-')."""
    return not files or files == ["-"]


def read_documents(files):
    """(name, text) pairs; standard input when `files` is empty or '-'. `ValueError` naming a file that is not
    UTF-8 text."""
    if reads_stdin(files):
        return [("<stdin>", sys.stdin.read())]
    documents = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                documents.append((path, f.read()))
        except UnicodeDecodeError as error:
            raise ValueError(f"{path!r} is not UTF-8 text ({error.reason} at byte {error.start})") from None
    return documents


def check_arguments(args):
    """The first problem with the command line that would otherwise show only after the model is loaded (or
    never), as one sentence naming the argument; None if there is none."""
    for name in ("batch_size", "num_beams", "max_new_tokens", "max_source_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name} must be a positive integer, got {value}"
    if args.min_new_tokens is not None and not 0 <= args.min_new_tokens <= args.max_new_tokens:
        return f"--min_new_tokens must be from 0 to --max_new_tokens={args.max_new_tokens}, got {args.min_new_tokens}"
    if not reads_stdin(args.files):
        for path in args.files:
            if not os.path.isfile(path):
                return f"{path!r} is not a file (it does not exist or is a folder); give text files, or '-' for stdin"
    if args.output_dir is not None and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        return f"--output_dir {args.output_dir!r} exists and is not a folder"
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            return f"--device {args.device!r} is not a device; use cpu, cuda, cuda:1, ..."
        if device.type == "cuda" and not torch.cuda.is_available():
            return f"--device {args.device!r}: no CUDA device is available here; use --device cpu"
    return None


def main(argv=None):
    """Run summarize.py with command-line arguments `argv` (default: `sys.argv[1:]`). Returns the results (see
    `summarize`). A bad argument, file or checkpoint exits with status 2 and one line naming it, before anything is
    written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", stream=sys.stderr)
    problem = check_arguments(args)
    if problem is not None:
        parser.error(problem)
    try:
        documents = read_documents(args.files)
    except ValueError as error:
        parser.error(str(error))
    try:
        model, tokenizer = load(args.model, args.device, DTYPES[args.dtype], args.trust_remote_code)
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        parser.error(
            f"--model {args.model!r}: cannot load a checkpoint ({reason}); expected a folder written by "
            "lsg-bart-convert or save_pretrained, or a Hub model id"
        )
    results = summarize(
        [text for _, text in documents],
        model,
        tokenizer,
        max_source_length=args.max_source_length,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        **generation_kwargs(args),
    )
    truncated = [name for (name, _), result in zip(documents, results) if result["truncated"]]
    if truncated:
        length = source_length(model, args.max_source_length)
        print(f"{len(truncated)} document(s) truncated to {length} tokens: {', '.join(truncated)}", file=sys.stderr)

    if args.output_dir is not None:
        os.makedirs(args.output_dir, exist_ok=True)
    for (name, _), result in zip(documents, results):
        if args.output_dir is not None:
            stem = "stdin" if name == "<stdin>" else os.path.splitext(os.path.basename(name))[0]
            with open(os.path.join(args.output_dir, f"{stem}.summary.txt"), "w", encoding="utf-8") as f:
                f.write(result["summary"] + "\n")
        if args.jsonl:
            print(json.dumps({"file": name, **result}, ensure_ascii=False))
        elif args.output_dir is not None:
            continue
        elif len(documents) > 1:
            print(f"==> {name} <==\n{result['summary']}\n")
        else:
            print(result["summary"])
    return results


if __name__ == "__main__":
    main()
