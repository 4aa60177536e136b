#!/usr/bin/env python
"""Summarise long text files (or standard input) with an LSG-BART checkpoint.

A small front end to the package's corpus command (`lsg-bart-summarize`, `lsg_bart/summarize.py`: resumable, several
processes and machines, JSONL/CSV/parquet inputs; docs/corpus.md), for a few files at hand: each document is
summarised by its `summarize_texts` (truncated to the model's length, `max_position_embeddings`, or
`--max_source_length`; batched longest first; beam search) and written to standard output, to `--output_dir` (one
`<name>.summary.txt` per file) or as JSON lines (`--jsonl`). A progress bar on standard error follows the documents.

    python examples/summarize.py --model path/to/lsg-bart-checkpoint report1.txt report2.txt
    cat report.txt | python examples/summarize.py --model path/to/checkpoint --num_beams 4 --max_new_tokens 256
    python examples/summarize.py --model ckpt --output_dir summaries --batch_size 4 docs/*.txt
"""

import argparse
import json
import logging
import os
import sys

from lsg_bart.cli import OneLineErrorParser, input_length, one_line
from lsg_bart.summarize import (
    DTYPES,
    add_generation_arguments,
    check_generation_arguments,
    generation_kwargs,
    load_model,
    summarize_texts,
)

# torch, transformers and the checkpoint are loaded once the arguments and files are checked: `--help` and argument
# errors answer without them (they take seconds to import; lsg_bart.summarize imports them only when it loads a model).

logger = logging.getLogger("summarize")


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
    add_generation_arguments(parser)
    parser.add_argument(
        "--batch_size", type=int, default=1, help="Documents per generate() call (default: %(default)s)."
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, ... (default: cuda when available).")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="Weights' dtype (default: %(default)s).")
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
    """The first problem with the command line, as one sentence naming the argument, or None. Only the standard
    library is used: the checks answer before torch and the checkpoint are loaded."""
    problem = check_generation_arguments(args, ("batch_size", "num_beams", "max_new_tokens", "max_source_length"))
    if problem is not None:
        return problem
    if not reads_stdin(args.files):
        for path in args.files:
            if not os.path.isfile(path):
                return f"{path!r} is not a file (it does not exist or is a folder); give text files, or '-' for stdin"
    if args.output_dir is not None and os.path.exists(args.output_dir) and not os.path.isdir(args.output_dir):
        return f"--output_dir {args.output_dir!r} exists and is not a folder"
    return None


def write_results(documents, results, args):
    """Each summary to `--output_dir`, as a JSON line (`--jsonl`) or as text on standard output."""
    if args.output_dir is not None:
        os.makedirs(args.output_dir, exist_ok=True)
    for (name, _), result in zip(documents, results):
        if "error" in result:  # an empty document: said, not summarised
            print(json.dumps({"file": name, **result}) if args.jsonl else f"{name}: {result['error']}, not summarised",
                  file=sys.stdout if args.jsonl else sys.stderr)  # fmt: skip
            continue
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


def main(argv=None):
    """Run summarize.py with command-line arguments `argv` (default: `sys.argv[1:]`). Returns the results (dicts:
    `summary`, `input_tokens` kept, `truncated`). A bad argument, file or checkpoint exits with status 2 and one line
    naming it, before anything is written."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", stream=sys.stderr)
    problem = check_arguments(args)
    if problem is not None:
        parser.error(problem)
    try:
        documents = read_documents(args.files)
        model, tokenizer = load_model(args.model, args.device, args.dtype, trust_remote_code=args.trust_remote_code)
    except ValueError as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(
            f"--model {args.model!r}: cannot load a checkpoint ({one_line(error) or type(error).__name__}); expected "
            "a folder written by lsg-bart-convert or save_pretrained, or a Hub model id"
        )
    length = input_length(args.max_source_length, "--max_source_length", tokenizer, model.config, logger)
    results = summarize_texts(model, tokenizer, [text for _, text in documents], batch_size=args.batch_size,
                              max_input_length=length, progress=not args.no_progress,
                              **generation_kwargs(args))  # fmt: skip
    truncated = [name for (name, _), result in zip(documents, results) if result.get("truncated")]
    if truncated:
        print(f"{len(truncated)} document(s) truncated to {length} tokens: {', '.join(truncated)}", file=sys.stderr)
    write_results(documents, results, args)
    return results


if __name__ == "__main__":
    main()
