#!/usr/bin/env python3
"""How closely int8 LSG-BART follows float32 on a trained model: the same outputs, token for token?

Random weights say little about quantisation error (their logits are flat, so any noise flips a token), so this
trains a small LSG-BART (d_model 128, 2 + 2 layers, blocks of 32, 1,024 positions) on a task it can learn on a CPU
in minutes: each 512-token document mixes the words of 3 of 8 topics (8 words each), and its summary names those
topics, in the order of their names. Then, on held-out documents, it compares `generate` (4 beams) in float32 with
the same model after `torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)`, and with torchao's int8
weight-only configuration where torchao is installed: share of identical output tokens, ROUGE-L between the outputs,
and each one's exact-match rate against the references. Writes JSON and markdown to --out-dir.

  python benchmarks/int8_agreement.py                 # about 3 minutes on 2 cores
  python benchmarks/int8_agreement.py --steps 50      # a smoke test (an untrained model)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate_benchmark import dynamic_int8  # noqa: E402
from core import cpu_description, write_results  # noqa: E402

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "results" / "int8"
LENGTH, BLOCK = 512, 32
TOPICS, WORDS_PER_TOPIC, TOPICS_PER_DOCUMENT = 8, 8, 3
FIRST_WORD, FIRST_NAME = 10, 90  # topic k's words: 10 + 8k ... 17 + 8k; its name: 90 + k
SUMMARY = TOPICS_PER_DOCUMENT + 1  # the names, then the end token
VOCAB = 100
BOS, PAD, EOS = 0, 1, 2


def make_batch(size, generator):
    """Documents (size, LENGTH) of words from TOPICS_PER_DOCUMENT topics each, and their summaries (size, SUMMARY):
    the topics' names in ascending order, then the end token."""
    import torch

    topics = torch.stack([torch.randperm(TOPICS, generator=generator)[:TOPICS_PER_DOCUMENT].sort().values
                          for _ in range(size)])  # (size, TOPICS_PER_DOCUMENT)
    which = torch.randint(0, TOPICS_PER_DOCUMENT, (size, LENGTH), generator=generator)
    word = torch.randint(0, WORDS_PER_TOPIC, (size, LENGTH), generator=generator)
    documents = FIRST_WORD + topics.gather(1, which) * WORDS_PER_TOPIC + word
    documents[:, 0], documents[:, -1] = BOS, EOS
    summaries = torch.cat([FIRST_NAME + topics, torch.full((size, 1), EOS)], dim=1)
    return documents, summaries


def build_model(seed):
    import torch

    from lsg_bart import LSGBartConfig, LSGBartForConditionalGeneration

    torch.manual_seed(seed)
    config = LSGBartConfig(
        vocab_size=VOCAB, d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=1024,
        block_size=BLOCK, sparse_block_size=BLOCK, sparsity_factor=2, num_global_tokens=1, dropout=0.0,
        attention_dropout=0.0, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
        forced_bos_token_id=None, forced_eos_token_id=None,
    )
    return LSGBartForConditionalGeneration(config)


def train(model, steps, batch, seed, log):
    import torch

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 50))
    model.train()
    losses = []
    for step in range(steps):
        documents, summaries = make_batch(batch, generator)
        loss = model(input_ids=documents, labels=summaries).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.4f}")
    return losses


def generate(model, documents, beams):
    import torch

    model.eval()
    with torch.inference_mode():
        output = model.generate(input_ids=documents, num_beams=beams, max_new_tokens=SUMMARY, min_new_tokens=1)
    return [row[1:].tolist() for row in output]  # without the decoder start token


def strip(ids):
    """Output ids up to (not including) the first end or padding token."""
    ends = [index for index, token in enumerate(ids) if token in (EOS, PAD)]
    return ids[: ends[0]] if ends else ids


def compare(candidate, reference_outputs, references):
    """Agreement of `candidate` outputs with the float32 outputs, and exact matches against the references."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    same = total = 0
    rouge = []
    for ours, theirs in zip(candidate, reference_outputs):
        same += sum(a == b for a, b in zip(ours, theirs))
        total += max(len(ours), len(theirs))
        rouge.append(scorer.score(" ".join(map(str, strip(theirs))), " ".join(map(str, strip(ours))))["rougeL"].fmeasure)
    exact = sum(strip(ours) == reference for ours, reference in zip(candidate, references)) / len(references)
    return {"identical_tokens": same / total, "rougeL_vs_fp32": sum(rouge) / len(rouge), "exact_match": exact}


def quantized_models(model):
    """(name, model) for each int8 form: torch.ao's dynamic quantisation, and torchao's where it is installed."""
    forms = [("torch.ao dynamic int8", dynamic_int8(copy.deepcopy(model)))]
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        return forms
    weight_only = copy.deepcopy(model)
    quantize_(weight_only, Int8WeightOnlyConfig())
    return forms + [("torchao int8 weight-only", weight_only)]


def markdown(results):
    lines = [f"# int8 against float32 on a trained LSG-BART, {results['machine']}, {results['date']}", "",
             f"Command: `{results['command']}`", "",
             f"Training: {results['steps']} steps, final loss {results['final_loss']:.4f}; "
             f"{results['documents']} held-out documents of {LENGTH} tokens, {results['beams']} beams; "
             f"float32 exact match {results['fp32_exact_match']:.1%}.", "",
             "| form | identical tokens | ROUGE-L vs float32 | exact match vs references |", "|---|---|---|---|"]
    for row in results["rows"]:
        lines.append(f"| {row['form']} | {row['identical_tokens']:.1%} | {row['rougeL_vs_fp32']:.3f} | "
                     f"{row['exact_match']:.1%} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--batch", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--documents", type=int, default=64, help="held-out documents compared (default 64)")
    parser.add_argument("--beams", type=int, default=4, help="beams of generate (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help=f"default {DEFAULT_OUT_DIR}")
    args = parser.parse_args(argv)
    for name in ("steps", "batch", "documents", "beams"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    start = time.perf_counter()
    model = build_model(args.seed)
    losses = train(model, args.steps, args.batch, args.seed, lambda line: print(line, flush=True))
    documents, references = make_batch(args.documents, torch.Generator().manual_seed(args.seed + 1))
    references = [strip(row.tolist()) for row in references]
    fp32 = generate(model, documents, args.beams)
    rows = [{"form": name, **compare(generate(quantized, documents, args.beams), fp32, references)}
            for name, quantized in quantized_models(model)]
    results = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), command="python " + " ".join(sys.argv),
        machine=cpu_description(), steps=args.steps, final_loss=losses[-1], documents=args.documents,
        beams=args.beams, fp32_exact_match=compare(fp32, fp32, references)["exact_match"], rows=rows,
        seconds=time.perf_counter() - start,
    )
    write_results(args.out_dir, "results", results, markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
