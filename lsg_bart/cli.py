"""What the command lines of the package and of `examples/` share: one-line errors, the `--model_kwargs` JSON and
the input length a flag asks for.

Standard library only, so that `--help` and argument errors answer before torch and transformers are imported.
"""

import argparse
import json


def one_line(text):
    """`text` with its lines joined by spaces (messages from transformers and huggingface_hub span several)."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


class OneLineErrors:
    """Mix into an `argparse.ArgumentParser` (or transformers' `HfArgumentParser`): errors are one line,
    `PROG: error: MESSAGE`, with exit status 2 (the usage is for --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


class OneLineErrorParser(OneLineErrors, argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose errors are one line."""


def json_object(text, flag="--model_kwargs"):
    """`text` (JSON) as a dict, {} when empty; `ValueError` naming `flag` unless it is a JSON object."""
    try:
        value = json.loads(text) if text and text.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{flag} is not valid JSON ({error}): {text!r}; expected an object such as "
            '\'{"block_size": 128, "sparsity_type": "norm"}\''
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object (a dict of config fields), got {text!r}")
    return value


def input_length(requested, flag, tokenizer, config, logger):
    """The tokens kept of each input: `requested` (the value of `flag`), or the model's length (the tokenizer's
    `model_max_length` or the config's `max_position_embeddings`, whichever is smaller); never more than the
    position table, with a warning on `logger` when `requested` is cut."""
    model_length = config.max_position_embeddings
    length = requested or min(tokenizer.model_max_length, model_length)
    if length > model_length:
        logger.warning(
            "%s=%d exceeds the model's max_position_embeddings=%d; using %d.", flag, length, model_length, model_length
        )
        length = model_length
    return length
