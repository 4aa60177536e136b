"""End-to-end demo, offline: make a small BART, convert it to LSG-BART, run a long input through it.

    lsg-bart-demo                      # or: python -m lsg_bart.demo
    lsg-bart-demo --length 4096 --input_tokens 4000 --output_dir demo-out
    lsg-bart-demo --initial_model path/to/a/bart/folder

With no arguments: a tiny random BART (d_model 32, 2 + 2 layers) and its BPE tokenizer are built locally, the
converter turns it into an LSG-BART checkpoint of 16,384 positions, and a 10,000-token text goes through the
converted checkpoint (loaded with `trust_remote_code=True`): the encoder, then `generate` with 2 beams. Each step is
printed with its duration. The weights are random, so the generated text is noise: the demo shows the mechanics.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

DEFAULT_LSG_KWARGS = {
    "block_size": 128,
    "sparse_block_size": 128,
    "sparsity_factor": 2,
    "sparsity_type": "norm",
    "num_global_tokens": 1,
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="lsg-bart-demo",
        description="Convert a small BART to LSG-BART and run a long input through it (encoder and generate), "
        "offline, printing each step and its duration.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--initial_model", default=None,
        help="BART checkpoint (folder or Hub id) to convert; default: a tiny random BART built locally",
    )
    parser.add_argument("--length", type=int, default=16384, help="max_sequence_length of the converted model")
    parser.add_argument("--input_tokens", type=int, default=10000, help="length of the input text, in tokens")
    parser.add_argument(
        "--output_dir", default=None,
        help="folder for the checkpoints (kept); default: a temporary folder removed at the end",
    )
    parser.add_argument("--model_kwargs", default=json.dumps(DEFAULT_LSG_KWARGS), help="LSG settings as JSON")
    parser.add_argument("--num_beams", type=int, default=2, help="beams for generate")
    parser.add_argument("--max_new_tokens", type=int, default=8, help="tokens generated")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tiny model and of the conversion")
    return parser


class Steps:
    """Prints numbered steps with their duration."""

    def __init__(self, total):
        self.total, self.count, self.timings = total, 0, {}

    def run(self, title, function):
        self.count += 1
        print(f"[{self.count}/{self.total}] {title} ...", flush=True)
        start = time.perf_counter()
        result, summary = function()
        seconds = time.perf_counter() - start
        self.timings[title] = seconds
        print(f"      {summary} ({seconds:.2f} s)", flush=True)
        return result


def run_demo(args, workdir):
    """The demo proper; checkpoints go to `workdir`. Returns a dict of what it measured."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .convert import convert_checkpoint, parse_model_kwargs
    from .tiny import build_tiny_bart, sample_text

    model_kwargs = parse_model_kwargs(args.model_kwargs)
    workdir = Path(workdir)
    steps = Steps(6)
    print(f"LSG-BART demo: checkpoints in {workdir}")

    initial = args.initial_model
    if initial is None:
        initial = workdir / "tiny-bart"

        def build():
            model, tokenizer = build_tiny_bart(initial, seed=args.seed)
            c = model.config
            return initial, (
                f"BART d_model={c.d_model}, {c.encoder_layers}+{c.decoder_layers} layers, {c.max_position_embeddings} "
                f"positions, {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary {len(tokenizer)} "
                f"-> {initial}"
            )

        steps.run("Build a tiny random BART and its tokenizer locally", build)
    else:
        steps.run("Use the given BART checkpoint", lambda: (initial, str(initial)))

    converted = workdir / f"lsg-bart-{args.length}"

    def convert():
        path = convert_checkpoint(
            initial,
            converted,
            max_sequence_length=args.length,
            architecture="BartForConditionalGeneration",
            model_kwargs=model_kwargs,
            seed=args.seed,
            overwrite=True,
        )
        return path, f"{path} ({', '.join(f'{k}={v}' for k, v in model_kwargs.items())})"

    steps.run(f"Convert it to LSG-BART with {args.length} positions", convert)

    def load():
        tokenizer = AutoTokenizer.from_pretrained(converted, trust_remote_code=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(converted, trust_remote_code=True).eval()
        return (tokenizer, model), f"{type(model).__name__} from the folder's own code (trust_remote_code=True)"

    tokenizer, model = steps.run("Load the converted checkpoint with AutoTokenizer / AutoModelForSeq2SeqLM", load)

    def tokenize():
        text = sample_text(args.input_tokens)  # at least one token per word
        inputs = tokenizer(text, truncation=True, max_length=args.input_tokens, return_tensors="pt")
        return inputs, f"{len(text):,} characters -> {inputs['input_ids'].shape[1]:,} tokens"

    inputs = steps.run(f"Tokenize a long text ({args.input_tokens:,} tokens)", tokenize)
    num_tokens = inputs["input_ids"].shape[1]

    def encode():
        with torch.inference_mode():
            states = model.get_encoder()(**inputs).last_hidden_state
        return states, (
            f"encoder output {tuple(states.shape)} ({model.config.num_global_tokens} global token(s) + "
            f"{num_tokens:,} tokens), finite: {bool(torch.isfinite(states).all())}"
        )

    states = steps.run(f"Run the encoder on {num_tokens:,} tokens", encode)

    def generate():
        with torch.inference_mode():
            output = model.generate(**inputs, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
        text = tokenizer.decode(output[0], skip_special_tokens=True)
        return output, f"{output.shape[1]} ids: {output[0].tolist()} -> {text!r} (random weights: noise)"

    output = steps.run(
        f"generate on {num_tokens:,} tokens (num_beams={args.num_beams}, max_new_tokens={args.max_new_tokens})",
        generate,
    )
    total = sum(steps.timings.values())
    print(f"Done in {total:.1f} s: a {num_tokens:,}-token input went through a BART converted to LSG-BART.")
    return {
        "num_tokens": num_tokens,
        "encoder_shape": tuple(states.shape),
        "generated": output,
        "timings": steps.timings,
        "converted": converted,
    }


def main(argv=None):
    """Entry point of `lsg-bart-demo`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.length < 1 or args.input_tokens < 1:
        parser.error("--length and --input_tokens must be positive")
    if args.input_tokens > args.length:
        parser.error(f"--input_tokens={args.input_tokens} is above --length={args.length}")
    torch.manual_seed(args.seed)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one line per step is enough here
    try:
        if args.output_dir is not None:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            run_demo(args, args.output_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="lsg-bart-demo-") as workdir:
                run_demo(args, workdir)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
