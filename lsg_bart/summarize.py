"""Summarise a corpus with an LSG-BART checkpoint: resumable, over several processes and machines.

Reads JSON lines (--id_column, --text_column), text files (a folder, a quoted glob or files; the id is the file
name), or CSV, parquet, JSON or a saved `datasets` folder (these need the datasets package), and appends one JSON
line per document to --output as each batch finishes:

    {"id": ..., "summary": "...", "input_tokens": 4096, "truncated": true}
    {"id": ..., "error": "empty text"}          (a row that cannot be summarised: reported, and the run goes on)

A rerun on the same --output skips the ids already in it (error lines included; --retry_errors summarises those
again), so a killed run loses at most its batches in flight. Under `torchrun --nproc_per_node N -m
lsg_bart.summarize ...` or `accelerate launch -m lsg_bart.summarize ...` (one machine or several), each process
summarises its share of the ids that are left, into a shard beside --output, which process 0 folds into --output
at the end: it then holds each id once. On CPU the cores are split between the processes of a machine; on GPUs each
process takes the device of its LOCAL_RANK.

    lsg-bart-summarize --model CKPT --input corpus.jsonl --id_column id --text_column text --output out.jsonl
    torchrun --nproc_per_node 2 -m lsg_bart.summarize --model CKPT --input corpus.jsonl --output out.jsonl
    lsg-bart-summarize --model CKPT --input 'reports/*.txt' --output out.jsonl --batch_size 8 --int8

In Python: `summarize_texts(model, tokenizer, texts)` (docs/corpus.md).
"""

import argparse
import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta

from .cli import OneLineErrorParser, input_length, one_line
from .corpus import BadRow, id_key, open_corpus
from .resumable_jsonl import Appender, OutputError, fold_shard, repair_tail, scan, shard_path, shards_beside

# torch, transformers and the checkpoint are loaded once the arguments and the input are checked: `--help` and
# argument errors answer without them (they take seconds to import).

logger = logging.getLogger("lsg_bart.summarize")

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes
# Devices as torch names them: cpu, cuda, cuda:1, mps, xpu, xpu:0, ...
DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|npu|mlu|musa)(:\d+)?")
GENERATION_FLAGS = ("num_beams", "max_new_tokens", "min_new_tokens", "length_penalty", "no_repeat_ngram_size",
                    "repetition_penalty")  # fmt: skip
POSITIVE_FLAGS = ("batch_size", "num_beams", "max_new_tokens", "max_input_length", "sort_window", "threads")
# torch.ao.quantization is deprecated (torch 2.10 and later warn when it quantises, twice) but still ships, and its
# dynamic int8 is the fastest int8 form measured on CPU (benchmarks/int8_forms.py): its warnings are silenced.
TORCH_AO_DEPRECATIONS = r"torch\.(ao\.quantization is|quantize_per_tensor,.*are) deprecated"
# The last barrier waits for the slowest process, which may have hours of work left when the first one is done.
BARRIER_TIMEOUT = timedelta(days=7)


def add_generation_arguments(parser):
    """The generation options (beam search and lengths), shared with examples/summarize.py."""
    generation = parser.add_argument_group("generation (beam search)")
    generation.add_argument("--num_beams", type=int, default=4, help="Beam size (1: greedy; default: %(default)s).")
    generation.add_argument(
        "--max_new_tokens", type=int, default=256, help="Longest summary, in tokens (default: %(default)s)."
    )
    generation.add_argument(
        "--min_new_tokens", type=int, default=None, help="Shortest summary, in tokens (default: none)."
    )
    generation.add_argument("--length_penalty", type=float, default=None,
                            help=">1 favours longer summaries (default: the checkpoint's).")  # fmt: skip
    generation.add_argument("--no_repeat_ngram_size", type=int, default=None,
                            help="Forbid repeating n-grams of this size (default: the checkpoint's).")  # fmt: skip
    generation.add_argument("--repetition_penalty", type=float, default=None,
                            help="Penalty on repeated tokens (default: the checkpoint's).")  # fmt: skip
    generation.add_argument(
        "--early_stopping", action="store_true", help="Stop the beam search once num_beams candidates have ended."
    )


def build_parser():
    """The command-line parser of lsg-bart-summarize."""
    parser = OneLineErrorParser(
        prog="lsg-bart-summarize", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="Path or Hub id of an LSG-BART summarisation checkpoint.")
    parser.add_argument(
        "--input", required=True, nargs="+", metavar="PATH",
        help="A .jsonl file; a folder of .txt files, a quoted glob or text files; a .csv, .tsv, .parquet or .json "
        "file, or a folder written by Dataset.save_to_disk. Several paths of one kind are read in turn.",
    )  # fmt: skip
    parser.add_argument("--output", required=True, help="The JSON lines file to append to (created if missing).")
    parser.add_argument("--id_column", default="id", help="The field of each row's id (default: %(default)s).")
    parser.add_argument("--text_column", default="text", help="The field of each row's text (default: %(default)s).")
    parser.add_argument(
        "--retry_errors", action="store_true",
        help="Summarise again the ids whose line in --output is an error (their error lines are removed first).",
    )  # fmt: skip
    parser.add_argument(
        "--max_input_length", type=int, default=None,
        help="Tokens kept of each document (default and maximum: the model's max_position_embeddings).",
    )  # fmt: skip
    add_generation_arguments(parser)
    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--batch_size", type=int, default=4, help="Documents per generate() call (default: %(default)s)."
    )
    speed.add_argument(
        "--sort_window", type=int, default=256,
        help="Documents read, tokenised and sorted by length together, so that a batch holds documents of about one "
        "length and little padding; 1 keeps the input order (default: %(default)s).",
    )  # fmt: skip
    speed.add_argument(
        "--device", default=None,
        help="cpu, cuda, cuda:1, mps, ... ('cuda': each process takes cuda:LOCAL_RANK; default: cuda when available).",
    )  # fmt: skip
    speed.add_argument("--dtype", choices=DTYPES, default="float32", help="Weights' dtype (default: %(default)s).")
    speed.add_argument(
        "--int8", action="store_true",
        help="Dynamic int8 quantisation of every linear layer (torch.ao; CPU and float32 only): about 1.8x faster "
        "generation on CPU (docs/performance.md).",
    )  # fmt: skip
    speed.add_argument(
        "--threads", type=int, default=None,
        help="CPU threads of each process (default: the cores divided by the processes on this machine).",
    )  # fmt: skip
    parser.add_argument("--no_progress", action="store_true", help="Hide the progress bar (shown by process 0).")
    parser.add_argument(
        "--trust_remote_code", action=argparse.BooleanOptionalAction, default=True,
        help="Run the checkpoint's own modelling code (needed for LSG checkpoints without this package; default: "
        "%(default)s).",
    )  # fmt: skip
    return parser


def check_generation_arguments(args, positive=GENERATION_FLAGS[:2]):
    """The first problem with the numbers of the command line, as one sentence naming the flag, or None."""
    for name in positive:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            return f"--{name} must be a positive integer, got {value}"
    if args.min_new_tokens is not None and not 0 <= args.min_new_tokens <= args.max_new_tokens:
        return f"--min_new_tokens must be from 0 to --max_new_tokens={args.max_new_tokens}, got {args.min_new_tokens}"
    if args.device is not None and not DEVICE.fullmatch(args.device):
        return f"--device {args.device!r} is not a device; use cpu, cuda, cuda:1, mps, ..."
    return None


def check_arguments(args):
    """The first problem with the command line, as one sentence naming the argument, or None. Standard library
    only: the checks answer before torch and the checkpoint are loaded."""
    problem = check_generation_arguments(args, POSITIVE_FLAGS)
    if problem is not None:
        return problem
    if args.int8 and args.dtype != "float32":
        return f"--int8 quantises float32 weights; drop --dtype {args.dtype} or --int8"
    if args.int8 and args.device is not None and args.device != "cpu":
        return f"--int8 runs on CPU only (torch.ao's dynamic quantisation); drop --device {args.device} or --int8"
    output = args.output
    if os.path.isdir(output):
        return f"--output {output!r} is a folder; give a .jsonl file"
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        return f"--output {output!r}: the folder {folder!r} does not exist"
    return None


def generation_kwargs(args):
    """The generate() arguments given on the command line."""
    kwargs = {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) is not None}
    if args.early_stopping:
        kwargs["early_stopping"] = True
    return kwargs


# -- the model --------------------------------------------------------------------------------------------------


def load_model(model_name_or_path, device=None, dtype="float32", int8=False, trust_remote_code=True):
    """The checkpoint's model (in eval mode, on `device`, default: cuda when available) and tokenizer. `int8`:
    dynamic int8 quantisation of every `nn.Linear` (CPU, float32). `ValueError` for a CUDA device where there is
    none; `OSError` for a checkpoint that cannot be loaded."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .compat import DTYPE_ARGUMENT

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: no CUDA device is available here; use --device cpu")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    model = AutoModelForSeq2SeqLM.from_pretrained(
        model_name_or_path, trust_remote_code=trust_remote_code, **{DTYPE_ARGUMENT: getattr(torch, dtype)}
    ).eval()
    if int8:
        model = dynamic_int8(model)
    return model.to(device), tokenizer


def dynamic_int8(model):
    """`model` with every `nn.Linear` in PyTorch's dynamic int8 form (`torch.ao.quantization.quantize_dynamic`:
    weights in int8, activations quantised on the fly): the form docs/performance.md recommends on CPU by
    measurement. With its recipe's filter: torch.ao's two deprecation warnings (since torch 2.10) are silenced, and
    nothing else."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCH_AO_DEPRECATIONS)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def encode(tokenizer, texts, max_length):
    """Each text's token ids, cut to `max_length`, and its length before the cut."""
    kept = tokenizer(list(texts), truncation=True, max_length=max_length, verbose=False)["input_ids"]
    full = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]
    return [(ids, len(all_ids)) for ids, all_ids in zip(kept, full)]


def generate_summaries(model, tokenizer, batch_ids, generate_kwargs):
    """The summaries of a batch of token id lists (right-padded into one tensor), decoded as the package's
    summarization pipeline decodes them."""
    import torch

    width = max(len(ids) for ids in batch_ids)
    input_ids = torch.full((len(batch_ids), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for row, ids in enumerate(batch_ids):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device), **generate_kwargs
        )
    summaries = tokenizer.batch_decode(
        output, skip_special_tokens=True, clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces
    )
    return [summary.strip() for summary in summaries]


def batch_order(lengths, batch_size, sort_by_length=True):
    """The batches (lists of indices into `lengths`, the documents' token counts) in the order they run: longest
    first when `sort_by_length` (input order among equal lengths), else input order."""
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def summary_batches(model, tokenizer, texts, batch_size, max_length, sort_by_length=True, generate_kwargs=None):
    """Summarise `texts` (non-empty strings) a batch at a time, longest first when `sort_by_length` (documents of
    about one length share a batch: little padding). Yields each batch as (index in `texts`, result) pairs, where a
    result is {"summary", "input_tokens" (kept), "truncated"}."""
    encoded = encode(tokenizer, texts, max_length)
    for indices in batch_order([len(ids) for ids, _ in encoded], batch_size, sort_by_length):
        summaries = generate_summaries(model, tokenizer, [encoded[i][0] for i in indices], generate_kwargs or {})
        yield [
            (index, {"summary": summary, "input_tokens": len(encoded[index][0]),
                     "truncated": encoded[index][1] > len(encoded[index][0])})  # fmt: skip
            for index, summary in zip(indices, summaries)
        ]


def summarize_texts(model, tokenizer, texts, batch_size=4, max_input_length=None, sort_by_length=True,
                    progress=False, **generate_kwargs):  # fmt: skip
    """Summaries of `texts`, in their order: for each, {"summary", "input_tokens", "truncated"}, or {"error"} for
    a text that is not a non-empty string (the others are summarised all the same). What the command runs on each
    batch, for engines that call it on their partitions (Ray, Spark; see docs/corpus.md).

    `model` and `tokenizer`: an LSG-BART summarisation checkpoint's (`load_model`). Each text is cut to
    `max_input_length` tokens (default and maximum: the model's length); `batch_size` texts go to each `generate`
    call, longest first when `sort_by_length`; `generate_kwargs` (num_beams, max_new_tokens, ...) go to `generate`.
    `progress`: a progress bar on standard error.
    """
    from tqdm.auto import tqdm

    from .corpus import text_or_bad_row

    max_length = input_length(max_input_length, "max_input_length", tokenizer, model.config, logger)
    results = [text_or_bad_row(text, "text") for text in texts]
    results = [{"error": result.reason} if isinstance(result, BadRow) else None for result in results]
    good = [index for index, result in enumerate(results) if result is None]
    bar = tqdm(total=len(good), desc="Summarising", unit="doc", disable=not progress, file=sys.stderr)
    batches = summary_batches(model, tokenizer, [texts[i] for i in good], batch_size, max_length, sort_by_length,
                              generate_kwargs)  # fmt: skip
    for batch in batches:
        for index, result in batch:
            results[good[index]] = result
        bar.update(len(batch))
    bar.close()
    return results


# -- processes --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Processes:
    """This process's place among those that torchrun or accelerate launched (RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE); one process of one when launched alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls, environ=os.environ):
        """`ValueError` naming a variable that is not a number in range."""
        values = {}
        for name, default in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0")):
            text = environ.get(name, default)
            if not text.isdigit():
                raise ValueError(f"the environment variable {name}={text!r} is not a non-negative integer")
            values[name] = int(text)
        world_size, rank = values["WORLD_SIZE"], values["RANK"]
        if world_size < 1 or rank >= world_size:
            raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size}: RANK must be from 0 to WORLD_SIZE - 1")
        local = environ.get("LOCAL_WORLD_SIZE", "")
        local_world_size = int(local) if local.isdigit() and int(local) > 0 else world_size
        return cls(rank, world_size, values["LOCAL_RANK"], local_world_size)

    def start(self):
        """Join the other processes (gloo: they only wait for each other and pass a few small Python objects, on
        CPU as on GPUs, so no device is needed for it)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)

    def stop(self):
        if self.world_size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    def barrier(self):
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def agree(self, problem):
        """Process 0's `problem` (a message or None), known to every process once they all reach this point."""
        if self.world_size == 1:
            return problem
        import torch.distributed as dist

        shared = [problem]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]


def choose_device(requested, processes):
    """The device of this process: `requested`, with "cuda" (or none, where CUDA is available) meaning
    cuda:LOCAL_RANK, so that each process of a machine takes its own GPU."""
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{processes.local_rank}"
    return requested


def split_threads(device, threads, processes):
    """On CPU, give each process `threads` threads (default: its share of this machine's cores)."""
    import torch

    if device != "cpu":
        return
    if threads is None and processes.local_world_size > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = max(1, cores // processes.local_world_size)
    if threads is not None:
        torch.set_num_threads(threads)


# -- the run ----------------------------------------------------------------------------------------------------


def open_output(output, retry_errors):
    """Process 0's start: lock --output (created if missing), complete or cut its last line, fold in the shards
    that killed runs left, and with `retry_errors` remove its error lines. Returns its `Appender`."""
    writer = Appender(output)
    try:
        found = scan(output)
        repaired = repair_tail(output, found)
        if repaired:
            logger.warning(repaired)
        for shard in shards_beside(output):
            folded = fold_shard(shard, writer, found.keys)
            logger.warning("%s: folded in %d line(s) that a killed run left in %s", output, len(folded), shard)
        errors = sum(found.keys.values())
        if retry_errors and errors:
            kept = []
            scan(output, lambda record, line: kept.append(line) if "error" not in record else None)
            writer.replace_with(kept)
            logger.warning("%s: removed %d error line(s), to summarise their ids again", output, errors)
    except BaseException:
        writer.close_after_failure()
        raise
    return writer


@dataclass
class Tally:
    """What a process wrote this run."""

    summaries: int = 0
    truncated: int = 0
    errors: int = 0
    tokens: int = 0

    def add(self, records):
        for record in records:
            self.errors += "error" in record
            self.summaries += "summary" in record
            self.truncated += bool(record.get("truncated"))
            self.tokens += record.get("input_tokens", 0)


def work(args, corpus, share, writer, processes):
    """Summarise the documents `share` (indices into `corpus`) into `writer`, a window and a batch at a time."""
    from tqdm.auto import tqdm

    tally = Tally()
    if not share:
        return tally
    device = choose_device(args.device, processes)
    split_threads(device, args.threads, processes)
    try:
        model, tokenizer = load_model(args.model, device, args.dtype, args.int8, args.trust_remote_code)
    except OSError as error:
        raise ValueError(
            f"--model {args.model!r}: cannot load a checkpoint ({one_line(error) or type(error).__name__}); expected "
            "a folder written by lsg-bart-convert or save_pretrained, or a Hub model id"
        ) from None
    max_length = input_length(args.max_input_length, "--max_input_length", tokenizer, model.config, logger)
    window = max(args.sort_window, args.batch_size)
    of = f" (process 0's share of {processes.world_size})" if processes.world_size > 1 else ""
    bar = tqdm(total=len(share), desc=f"Summarising{of}", unit="doc", file=sys.stderr,
               disable=args.no_progress or processes.rank != 0)  # fmt: skip
    began = time.perf_counter()  # tokens/s counts from here, after the model is loaded
    for start in range(0, len(share), window):
        indices = share[start : start + window]
        texts = corpus.texts(indices)
        good = [(i, text) for i, text in zip(indices, texts) if not isinstance(text, BadRow)]
        bad = [(i, row) for i, row in zip(indices, texts) if isinstance(row, BadRow)]
        for index, row in bad:
            logger.warning("id %r (%s): %s; written as an error line", corpus.ids[index], corpus.where(index),
                           row.reason)  # fmt: skip
        records = [{"id": corpus.ids[index], "error": row.reason} for index, row in bad]
        writer.append(records)
        tally.add(records)
        bar.update(len(records))
        batches = summary_batches(model, tokenizer, [text for _, text in good], args.batch_size, max_length,
                                  args.sort_window > 1, generation_kwargs(args))  # fmt: skip
        for batch in batches:
            records = [{"id": corpus.ids[good[index][0]], **result} for index, result in batch]
            writer.append(records)
            tally.add(records)
            bar.update(len(records))
            bar.set_postfix_str(f"{tally.tokens / (time.perf_counter() - began):.0f} tokens/s", refresh=False)
    bar.close()
    return tally


def start_writing(output, retry_errors, processes):
    """Each process's `Appender`: --output for process 0 (`open_output`), a shard beside it for the others, created
    once process 0 has folded the shards of killed runs. `OutputError` in every process when process 0 cannot use
    --output, or cannot see the others' shards (which a multi-machine run needs: a shared file system)."""
    writer, problem = None, None
    if processes.rank == 0:
        try:
            writer = open_output(output, retry_errors)
        except OutputError as error:
            problem = str(error)
    problem = processes.agree(problem)
    if problem:
        raise OutputError(problem)
    shards = [shard_path(output, rank, processes.world_size) for rank in range(1, processes.world_size)]
    if processes.rank > 0:
        writer = Appender(shards[processes.rank - 1])
    processes.barrier()
    missing = [shard for shard in shards if not os.path.exists(shard)] if processes.rank == 0 else []
    problem = processes.agree(
        f"{missing[0]!r} (the shard of another process) is not visible to process 0: --output must be on a file "
        "system that every machine shares" if missing else None
    )
    if problem:
        writer.close_after_failure()
        raise OutputError(problem)
    return writer, shards


def summarize_corpus(args, corpus, processes):
    """Summarise `corpus` into `args.output` as this process's part of the run; process 0 folds the others'
    shards in at the end. Returns this process's report (process 0's covers the run)."""
    started = time.perf_counter()
    writer, shards = start_writing(args.output, args.retry_errors, processes)
    try:
        done = scan(args.output).keys  # process 0 has repaired it: every process reads the same ids
        remaining = [index for index, document_id in enumerate(corpus.ids) if id_key(document_id) not in done]
        # Every process computes the same `remaining`, so the shares are disjoint and cover it.
        tally = work(args, corpus, remaining[processes.rank :: processes.world_size], writer, processes)
        if processes.rank > 0:
            writer.close()
        processes.barrier()  # every shard is complete
        if processes.rank == 0:
            done = scan(args.output).keys  # with the ids that process 0 wrote
            for shard in shards:
                tally.add(fold_shard(shard, writer, done))
    except BaseException:
        writer.close_after_failure()
        raise
    writer.close()
    seconds = time.perf_counter() - started
    report = {"summaries": tally.summaries, "truncated": tally.truncated, "errors": tally.errors,
              "already_done": len(corpus) - len(remaining), "seconds": seconds}  # fmt: skip
    if processes.rank == 0:
        print(
            f"lsg-bart-summarize: {tally.summaries} summaries written to {args.output} ({tally.truncated} truncated), "
            f"{tally.errors} failures (error lines), {report['already_done']} already done; {seconds:.1f} s, "
            f"{(tally.summaries + tally.errors) / seconds:.2f} documents/s",
            file=sys.stderr,
        )
    return report


def run(argv=None):
    """Run lsg-bart-summarize with command-line arguments `argv` (default: `sys.argv[1:]`); returns this process's
    report: summaries, truncated, errors (written this run), already_done, seconds. A bad argument, input, output or
    checkpoint exits with status 2 and one line naming it, before any document is summarised."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s - %(name)s - %(message)s", stream=sys.stderr)
    try:
        processes = Processes.from_environment()
        problem = check_arguments(args)
        if problem is not None:
            parser.error(problem)
        corpus = open_corpus(args.input, args.id_column, args.text_column, output=args.output)
    except ValueError as error:
        parser.error(str(error))
    try:
        processes.start()
        return summarize_corpus(args, corpus, processes)
    except ValueError as error:  # OutputError too
        parser.error(str(error))
    finally:
        processes.stop()


def main(argv=None):
    """The console script: `run(argv)`, exit status 0 when the run ends."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
