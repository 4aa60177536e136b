"""Convert a BART checkpoint to LSG-BART, or resize / upgrade an LSG-BART checkpoint.

Library:

    >>> from lsg_bart.convert import convert_checkpoint
    >>> convert_checkpoint("facebook/bart-base", "lsg-bart-base-4096", max_sequence_length=4096,
    ...                    architecture="BartForConditionalGeneration")

Command line (`lsg-bart-convert`, `python -m lsg_bart.convert` or `python convert_checkpoint.py`):

    lsg-bart-convert --initial_model facebook/bart-base --model_name lsg-bart-base-4096 --max_sequence_length 4096

A conversion, in the order it runs, and the module of each part:

1. `convert_options`: the options (`ConvertOptions`, the same for the command line and the Python API), each
   checked on its own, then against the source's config.json (`plan_conversion`);
2. `safe_output`: the output path and an existing output folder checked; work folders of killed runs removed;
3. `convert_weights`: the model converted in memory (position tables, global embeddings, the new config);
4. `safe_output.new_checkpoint`: the checkpoint written into a hidden work folder, tested (`checkpoint_test`, with
   `run_test`), then renamed to the output folder: it is complete or absent;
5. here: the upload to the Hub (`push_to_hub`).

Steps 1 and 2 use the standard library only: every argument error answers before torch and transformers load.
"""

import logging
import sys
import time
import warnings

from .checkpoint_test import run_checkpoint_test
from .cli import one_line
from .convert_options import (
    ARCHITECTURES,
    DTYPES,
    SUPPORTED_ARCHITECTURES,
    ConversionPlan,
    ConversionWarning,
    ConvertOptions,
    build_parser,
    parse_model_kwargs,
    plan_conversion,
)
from .convert_weights import (
    build_lsg_model,
    convert_model,
    make_global_embeddings,
    model_card,
    positional_global_rows,
    save_converted,
    tile_positions,
)
from .safe_output import API_OVERWRITE, check_output_path, check_replaceable, new_checkpoint, remove_leftovers

logger = logging.getLogger("lsg_bart.convert")


def push_folder_to_hub(folder, repo_id, private=False, token=None, commit_message=None):
    """Create (or reuse) the Hub repository `repo_id` and upload `folder` to it. Returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message or "Upload LSG-BART checkpoint",
    )
    return str(url)


def convert_checkpoint(initial_model, model_name, *args, **kwargs):
    """Convert `initial_model` (a local folder or Hub id of a BART or LSG-BART checkpoint) and save it to the
    folder `model_name`. Returns the output folder as a `Path`.

    The other arguments are the fields of `ConvertOptions`, in its order (`max_sequence_length`, `architecture`,
    `random_global_init`, ...), best given by name. The checkpoint is written into a hidden work folder beside the
    output and renamed to it at the end: the output is complete or absent. Work folders left by killed runs on the
    same output are removed first.

    Raises:
        ValueError: a bad argument or output path, a source that is not BART, invalid LSG settings.
        FileExistsError: a non-empty output folder without `overwrite=True`, or one that is not a checkpoint.
    """
    return run_conversion(ConvertOptions(initial_model, model_name, *args, **kwargs))


def run_conversion(options, overwrite_flag=API_OVERWRITE):
    """`convert_checkpoint` with its `ConvertOptions`; `overwrite_flag` is how the messages name the overwrite
    (`overwrite=True` from Python, `--overwrite` on the command line)."""
    output = check_output_path(options.model_name, options.initial_model)
    remove_leftovers(output)
    check_replaceable(output, options.overwrite, overwrite_flag)
    plan = plan_conversion(options)

    start = time.perf_counter()
    model, tokenizer, info = build_lsg_model(plan)
    length = options.max_sequence_length
    logger.info(
        "Converted %s (%s, %s positions) to %s with %d positions in %.1fs",
        info["initial_model"], info["architecture"], info["source_length"], info["lsg_class"], length,
        time.perf_counter() - start,
    )
    with new_checkpoint(output, options.overwrite, overwrite_flag) as checkpoint:
        start = time.perf_counter()
        save_converted(model, tokenizer, info, checkpoint)
        logger.info("Saved in %.1fs", time.perf_counter() - start)
        del model  # the test loads the checkpoint again, with each Auto class
        if options.run_test:
            start = time.perf_counter()
            run_checkpoint_test(checkpoint, length, seed=options.seed)
            logger.info("Test passed in %.1fs", time.perf_counter() - start)
    logger.info("Wrote %s", output)

    if options.push_to_hub:
        try:
            url = push_folder_to_hub(
                output,
                options.push_to_hub,
                private=options.private,
                token=options.token,
                commit_message=f"LSG-BART conversion of {info['initial_model']} to {length} tokens",
            )
        except Exception as error:
            raise RuntimeError(
                f"the checkpoint is complete in {str(output)!r}, but pushing it to {options.push_to_hub!r} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        logger.info("Pushed to %s", url)
    return output


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Entry point of `lsg-bart-convert`. Returns the exit status: 0 done, 1 failed, 2 bad arguments (raised as
    `SystemExit` by the parser), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    previous_level = logger.level
    logger.setLevel(logging.INFO)
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        output = run_conversion(ConvertOptions(**vars(args)), overwrite_flag="--overwrite")
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; no output folder was written", file=sys.stderr)
        return 130
    except (RuntimeError, OSError) as error:
        print(f"{parser.prog}: error: {one_line(error)}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous_showwarning
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
    print(f"Done: {output}")
    return 0


__all__ = [
    "ARCHITECTURES",
    "DTYPES",
    "SUPPORTED_ARCHITECTURES",
    "ConversionPlan",
    "ConversionWarning",
    "ConvertOptions",
    "build_parser",
    "convert_checkpoint",
    "convert_model",
    "main",
    "make_global_embeddings",
    "model_card",
    "parse_model_kwargs",
    "plan_conversion",
    "positional_global_rows",
    "push_folder_to_hub",
    "run_checkpoint_test",
    "run_conversion",
    "save_converted",
    "tile_positions",
]

if __name__ == "__main__":
    sys.exit(main())
