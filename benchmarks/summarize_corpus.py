#!/usr/bin/env python3
"""Corpus summarisation speed: documents per second at several batch sizes, with and without length sorting.

What `lsg-bart-summarize` runs on each window of documents (`lsg_bart.summarize.summary_batches`: tokenise, order
the batches, `generate`, decode), timed on a generated corpus of mixed lengths (`--words`: equal shares of each
length, shuffled with a fixed seed), for each batch size in `--batch-sizes`, in input order and sorted by length
(longest first, the command's default). The model is an LSG-BART with random weights and the package's tiny
tokenizer (`--size`); the number of new tokens is forced (`min_new_tokens = max_new_tokens`), so that every setting
generates the same tokens' worth of work. Loading the model and writing the output are not timed.

Each round times every setting once, in turn, so that a busy machine slows them alike; medians over the rounds.
Reported per setting: seconds, documents/s, input tokens/s, the padded share of the batches' input tokens (from
the batches the command forms: `lsg_bart.summarize.batch_order`), and the speed-up over batch size 1 unsorted.
Writes results.json and results.md to --out-dir and prints the table.

  python benchmarks/summarize_corpus.py                                # small model, 24 documents, 1 round
  python benchmarks/summarize_corpus.py --size tiny --documents 6 --words 20,80 --batch-sizes 1,2   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core import cpu_description  # noqa: E402

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results" / "summarize_corpus"
SIZES = {
    "tiny": {"d_model": 32, "heads": 4, "ffn": 64, "layers": 2},
    "small": {"d_model": 256, "heads": 4, "ffn": 1024, "layers": 3},
    "base": {"d_model": 768, "heads": 12, "ffn": 3072, "layers": 6},
}
LSG = {"block_size": 64, "sparse_block_size": 64, "sparsity_factor": 2, "num_global_tokens": 1}


def build_model(size: dict, max_length: int, vocab_size: int):
    """An LSG-BART summarisation model of `size` with random weights, reading up to `max_length` tokens."""
    from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration

    config = LSGBartConfig(
        vocab_size=vocab_size, d_model=size["d_model"], encoder_layers=size["layers"], decoder_layers=size["layers"],
        encoder_attention_heads=size["heads"], decoder_attention_heads=size["heads"], encoder_ffn_dim=size["ffn"],
        decoder_ffn_dim=size["ffn"], max_position_embeddings=max_length, dropout=0.0, attention_dropout=0.0, **LSG,
    )  # fmt: skip
    return LSGBartForConditionalGeneration(config).eval()


def make_corpus(documents: int, words: list[int]) -> list[str]:
    """`documents` texts, equal shares of each length in `words`, in a shuffled (fixed) order."""
    from lsg_bart.tiny import sample_text

    lengths = [words[i % len(words)] for i in range(documents)]
    random.Random(0).shuffle(lengths)
    return [sample_text(length, seed) for seed, length in enumerate(lengths)]


def padded_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """The share of the batches' input tokens that are padding (each batch is as wide as its longest document)."""
    total = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths) / total


def timed_run(model, tokenizer, texts, batch_size, sort, max_length, generate_kwargs) -> float:
    from lsg_bart.summarize import summary_batches

    start = time.perf_counter()
    for _ in summary_batches(model, tokenizer, texts, batch_size, max_length, sort, generate_kwargs):
        pass
    return time.perf_counter() - start


def int_list(text: str) -> list[int]:
    values = [int(value) for value in text.split(",") if value.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model size (default: small)")
    parser.add_argument("--documents", type=int, default=24, help="documents in the corpus (default: 24)")
    parser.add_argument("--words", type=int_list, default=[100, 400, 1600],
                        help="document lengths in words, equal shares (default: 100,400,1600)")  # fmt: skip
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 4, 8], help="batch sizes (default: 1,4,8)")
    parser.add_argument("--beams", type=int, default=2, help="beams (default: 2)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="forced new tokens per summary (default: 32)")
    parser.add_argument("--max-length", type=int, default=4096, help="tokens kept of each document (default: 4096)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds; medians are reported (default: 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default: {DEFAULT_OUT_DIR}")
    args = parser.parse_args(argv)
    for name in ("documents", "beams", "max_new_tokens", "max_length", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from lsg_bart.summarize import batch_order, encode
    from lsg_bart.tiny import build_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = build_tokenizer(model_max_length=args.max_length)
    model = build_model(SIZES[args.size], args.max_length, len(tokenizer))
    texts = make_corpus(args.documents, args.words)
    lengths = [len(ids) for ids, _ in encode(tokenizer, texts, args.max_length)]
    generate_kwargs = dict(num_beams=args.beams, min_new_tokens=args.max_new_tokens,
                           max_new_tokens=args.max_new_tokens, early_stopping=False)  # fmt: skip
    settings = [(batch_size, sort) for batch_size in args.batch_sizes for sort in (False, True)]
    times = {setting: [] for setting in settings}
    timed_run(model, tokenizer, texts[:1], 1, False, args.max_length, generate_kwargs)  # warm-up
    for _ in range(args.rounds):
        for batch_size, sort in settings:
            seconds = timed_run(model, tokenizer, texts, batch_size, sort, args.max_length, generate_kwargs)
            times[(batch_size, sort)].append(seconds)
    rows = []
    for batch_size, sort in settings:
        median = statistics.median(times[(batch_size, sort)])
        rows.append(dict(batch_size=batch_size, sorted=sort, times_s=times[(batch_size, sort)], median_s=median,
                         docs_per_s=args.documents / median, input_tokens_per_s=sum(lengths) / median,
                         padded_fraction=padded_fraction(lengths, batch_order(lengths, batch_size, sort))))  # fmt: skip
    baseline = rows[0]["median_s"] if rows[0]["batch_size"] == 1 else None
    for row in rows:
        row["speedup_vs_batch_1_unsorted"] = baseline / row["median_s"] if baseline else None
    results = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), command="python " + " ".join(sys.argv),
                   machine=cpu_description(), threads=args.threads, torch=torch.__version__, size=args.size,
                   documents=args.documents, words=args.words, input_tokens=lengths, beams=args.beams,
                   new_tokens=args.max_new_tokens, rounds=args.rounds, rows=rows)  # fmt: skip
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (args.out_dir / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results) -> str:
    lines = [f"# Corpus summarisation, {results['machine']}, {results['threads']} threads, {results['date']}", "",
             f"Command: `{results['command']}` (torch {results['torch']}; {results['size']} model with random "
             f"weights; {results['documents']} documents of {', '.join(map(str, results['words']))} words, "
             f"{sum(results['input_tokens'])} input tokens; {results['beams']} beams, {results['new_tokens']} new "
             f"tokens forced; medians of {results['rounds']} round(s))", "",
             "| batch size | sorted by length | seconds | documents/s | input tokens/s | padded share "
             "| vs batch 1 unsorted |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in results["rows"]:
        speedup = row["speedup_vs_batch_1_unsorted"]
        lines.append(f"| {row['batch_size']} | {'yes' if row['sorted'] else 'no'} | {row['median_s']:.2f} | "
                     f"{row['docs_per_s']:.2f} | {row['input_tokens_per_s']:.0f} | {row['padded_fraction']:.0%} | "
                     f"{'' if speedup is None else f'{speedup:.2f}x'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
