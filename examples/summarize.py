#!/usr/bin/env python
"""Summarise long text files (or standard input) with an LSG-BART checkpoint.

Each document goes through the package's summarization pipeline (`LSGBartSummarizationPipeline`): it is truncated to
the model's length (`max_position_embeddings`, or `--max_source_length`), summarised with beam search, and written to
standard output, to `--output_dir` (one `<name>.summary.txt` per file) or as JSON lines (`--jsonl`). A progress bar
on standard error follows the documents.

    python examples/summarize.py --model path/to/lsg-bart-checkpoint report1.txt report2.txt
    cat report.txt | python examples/summarize.py --model path/to/checkpoint --num_beams 4 --max_new_tokens 256
    python examples/summarize.py --model ckpt --output_dir summaries --batch_size 4 docs/*.txt
"""

import argparse
import json
import logging
import os
import re
import sys

from lsg_bart.cli import OneLineErrorParser, input_length, one_line

# torch, transformers and the checkpoint are loaded once the arguments and files are checked: `--help` and argument
# errors answer without them (they take seconds to import).

logger = logging.getLogger("summarize")

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes
# Devices as torch names them: cpu, cuda, cuda:1, mps, xpu, xpu:0, ...
DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|npu|mlu|musa)(:\d+)?")
GENERATION_FLAGS = ("num_beams", "max_new_tokens", "min_new_tokens", "length_penalty", "no_repeat_ngram_size",
                    "repetition_penalty")  # fmt: skip


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
    generation.add_argument("--num_beams", type=int, default=4, help="Beam size (1: greedy; default: %(default)s).")
    generation.add_argument("--max_new_tokens", type=int, default=256, help="Longest summary, in tokens (default: %(default)s).")
    generation.add_argument("--min_new_tokens", type=int, default=None, help="Shortest summary, in tokens.")
    generation.add_argument("--length_penalty", type=float, default=None, help=">1 favours longer summaries.")
    generation.add_argument("--no_repeat_ngram_size", type=int, default=None, help="Forbid repeating n-grams.")
    generation.add_argument("--repetition_penalty", type=float, default=None, help="Penalty on repeated tokens.")
    generation.add_argument(
        "--early_stopping", action="store_true", help="Stop the beam search once num_beams candidates have ended."
    )
    parser.add_argument("--batch_size", type=int, default=1, help="Documents per generate() call (default: %(default)s).")
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


def generation_kwargs(args):
    """The generate() arguments given on the command line."""
    kwargs = {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) is not None}
    if args.early_stopping:
        kwargs["early_stopping"] = True
    return kwargs


def load_summarizer(model_name_or_path, device=None, dtype="float32", trust_remote_code=True, max_source_length=None):
    """The package's summarization pipeline on the checkpoint, on `device` (default: cuda when available). Its
    tokenizer's `model_max_length` is set to the tokens kept of each document, at which the pipeline truncates:
    `max_source_length`, at most the model's length (`lsg_bart.cli.input_length`)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from lsg_bart.compat import DTYPE_ARGUMENT
    from lsg_bart.pipeline_lsg_bart import LSGBartSummarizationPipeline

    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device is available here; use --device cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, **{DTYPE_ARGUMENT: getattr(torch, dtype)}
    )
    tokenizer.model_max_length = input_length(max_source_length, "--max_source_length", tokenizer, model.config, logger)
    # The installed package's pipeline, the one that LSG-BART checkpoints declare: it also serves checkpoints loaded
    # without their own code.
    return LSGBartSummarizationPipeline(model=model.eval(), tokenizer=tokenizer, device=device)


def summarize(texts, summarizer, batch_size=1, progress=True, **generate_kwargs):
    """Summaries of `texts`, in order, as dicts: `summary`, `input_tokens` (kept), `truncated` (bool).

    `summarizer` is the package's summarization pipeline (`load_summarizer`), which keeps the first
    `summarizer.tokenizer.model_max_length` tokens of each text; `generate_kwargs` go to `generate` (beam search
    settings and lengths).
    """
    from tqdm.auto import tqdm

    tokenizer = summarizer.tokenizer
    length = tokenizer.model_max_length
    full_lengths = [len(ids) for ids in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]
    # A generator makes the pipeline yield each document's summary as it is done, for the progress bar.
    summaries = summarizer(
        (text for text in texts),
        batch_size=batch_size,
        clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
        **generate_kwargs,
    )
    results = []
    progress_bar = tqdm(summaries, total=len(texts), desc="Summarising", unit="doc", disable=not progress,
                        file=sys.stderr)  # fmt: skip
    for summary, full_length in zip(progress_bar, full_lengths):
        kept = min(full_length, length)
        results.append(
            {"summary": summary[0]["summary_text"].strip(), "input_tokens": kept, "truncated": full_length > kept}
        )
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
    """The first problem with the command line, as one sentence naming the argument, or None. Only the standard
    library is used: the checks answer before torch and the checkpoint are loaded."""
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
    if args.device is not None and not DEVICE.fullmatch(args.device):
        return f"--device {args.device!r} is not a device; use cpu, cuda, cuda:1, mps, ..."
    return None


def write_results(documents, results, args):
    """Each summary to `--output_dir`, as a JSON line (`--jsonl`) or as text on standard output."""
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
        summarizer = load_summarizer(
            args.model, args.device, args.dtype, args.trust_remote_code, max_source_length=args.max_source_length
        )
    except ValueError as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(
            f"--model {args.model!r}: cannot load a checkpoint ({one_line(error) or type(error).__name__}); expected "
            "a folder written by lsg-bart-convert or save_pretrained, or a Hub model id"
        )
    results = summarize(
        [text for _, text in documents],
        summarizer,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        **generation_kwargs(args),
    )
    truncated = [name for (name, _), result in zip(documents, results) if result["truncated"]]
    if truncated:
        length = summarizer.tokenizer.model_max_length
        print(f"{len(truncated)} document(s) truncated to {length} tokens: {', '.join(truncated)}", file=sys.stderr)
    write_results(documents, results, args)
    return results


if __name__ == "__main__":
    main()
