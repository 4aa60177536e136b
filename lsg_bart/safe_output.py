"""Publishing the converter's output folder safely: it is complete or absent, and nothing is removed that the
converter did not write.

- `check_output_path`: paths that are never an output (the source, a folder around it, the current or home
  directory, `/`), before anything is loaded.
- `check_replaceable`: an existing output is replaced only with `overwrite`, and only if it holds a BART / LSG-BART
  checkpoint and nothing else.
- `new_checkpoint`: the checkpoint is written into a hidden work folder beside the output and renamed to it at the
  end; the old output goes only once the new one is in place.
- `remove_leftovers`: the work folders of killed runs (SIGKILL, out of memory) are recognised by a locked marker
  file and removed by the next run on the same output.

Standard library only.
"""

import contextlib
import fnmatch
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so leftovers of killed runs are named rather than removed
    fcntl = None

from . import REMOTE_CODE_FILES
from .convert_options import BART_MODEL_TYPES, ConversionWarning

logger = logging.getLogger("lsg_bart.convert")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)
# What a BART / LSG-BART checkpoint folder holds (save_pretrained, the tokenizers, this converter, the Hub's BART
# repositories): an overwrite replaces a folder that has a BART config.json and nothing but these.
CHECKPOINT_FILES = (
    "config.json",
    "generation_config.json",
    "README.md",
    ".gitattributes",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
    "flax_model.msgpack",
    "tf_model.h5",
    "rust_model.ot",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    *TOKENIZER_FILES,
    *REMOTE_CODE_FILES,
)

# Each run writes into a hidden work folder `.NAME.<random>.tmp/` beside the output, which holds this marker (what
# tells a later run that the folder is this program's), `new/NAME` (the checkpoint being written) and, while an
# overwrite is published, `previous/NAME` (the old output). The run holds a lock on the marker until it ends, so a
# later run on the same output knows a folder whose marker it can lock is left over from a killed run.
WORK_MARKER = "lsg-bart-convert.json"
WRITTEN_BY = "lsg-bart-convert"

# How an overwrite is asked for, named in the messages: from Python, or on the command line (`--overwrite`).
API_OVERWRITE = "overwrite=True"


def _shown(names, limit=10):
    names = list(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_output_path(model_name, initial_model):
    """The output folder `model_name` as a `Path`, after the checks that need neither the disk's contents nor any
    heavy import. `ValueError` for an empty name; for the current directory, the home directory, `/` or a folder
    that contains one of them; for the source folder, a folder inside it or a folder that contains it."""
    name = "" if model_name is None else str(model_name)
    if not name.strip():
        raise ValueError("--model_name is empty; give the name of a new folder for the converted checkpoint")
    output = Path(name)
    target = output.resolve()
    if target == Path(target.anchor):
        raise ValueError(f"--model_name {name!r} is the root folder; give a new folder for the converted checkpoint")
    for what, folder in (("the current directory", Path.cwd()), ("the home directory", Path.home())):
        folder = folder.resolve()
        if target == folder or target in folder.parents:
            relation = "is" if target == folder else "contains"
            raise ValueError(
                f"--model_name {name!r} {relation} {what} ({folder}); give a new folder for the converted checkpoint"
            )
    source = Path(str(initial_model))
    if source.exists():
        source = source.resolve()
        if target == source or source in target.parents:
            where = "is the source folder" if target == source else "is inside the source folder"
            raise ValueError(f"--model_name {name!r} {where} {str(initial_model)!r}; the source is never written to")
        if target in source.parents:
            raise ValueError(
                f"--model_name {name!r} contains the source {str(initial_model)!r}, which replacing it would remove"
            )
    return output


def _checkpoint_problem(folder, entries):
    """Why `folder` (holding `entries`) is not a BART / LSG-BART checkpoint and nothing else, or None."""
    unexpected = [
        entry.name + ("/" if entry.is_dir() else "")
        for entry in entries
        if entry.is_dir() or not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in CHECKPOINT_FILES)
    ]
    if unexpected:
        verb = "is" if len(unexpected) == 1 else "are"
        return f"{_shown(unexpected)} {verb} not part of a BART / LSG-BART checkpoint"
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except FileNotFoundError:
        return "it holds no config.json"
    except (OSError, ValueError, AttributeError) as error:
        return f"its config.json cannot be read as a model config ({type(error).__name__})"
    if model_type not in BART_MODEL_TYPES:
        return f"its config.json is not a BART / LSG-BART config (model_type={model_type!r})"
    return None


def check_replaceable(output, overwrite, overwrite_flag=API_OVERWRITE):
    """`FileExistsError` unless `output` is absent, an empty folder, or, with `overwrite`, a folder that holds a
    BART / LSG-BART checkpoint and nothing else. The message names the overwrite as the user asks for it
    (`overwrite_flag`) and lists what it would have removed."""
    if not os.path.lexists(output):
        return
    if not output.is_dir():
        raise FileExistsError(f"output {str(output)!r} exists and is not a folder")
    entries = sorted(output.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"output folder {str(output)!r} is not empty; pass {overwrite_flag} to replace it")
    problem = _checkpoint_problem(output, entries)
    if problem is not None:
        names = [entry.name + ("/" if entry.is_dir() else "") for entry in entries]
        raise FileExistsError(
            f"{overwrite_flag} would remove everything in {str(output)!r} ({_shown(names)}), but {problem}; nothing "
            "was removed: empty that folder yourself or choose another output folder"
        )


def _work_folders(output):
    """This program's work folders for `output` (beside it): those whose marker names `output`, an empty marker
    (a run killed while writing it) or no marker in an empty folder (killed before writing it)."""
    parent = output.absolute().parent
    if not parent.is_dir():
        return []
    prefix = f".{output.name}."
    found = []
    for path in sorted(parent.iterdir()):
        if not (path.name.startswith(prefix) and path.name.endswith(".tmp")) or path.is_symlink() or not path.is_dir():
            continue
        marker = path / WORK_MARKER
        if not marker.is_file():
            if not any(path.iterdir()):
                found.append(path)
            continue
        text = marker.read_text(encoding="utf-8")
        try:
            record = json.loads(text) if text else None
        except ValueError:
            continue
        if record is None or (record.get("written_by"), record.get("output")) == (WRITTEN_BY, output.name):
            found.append(path)
    return found


def remove_leftovers(output):
    """Remove the work folders that killed runs (SIGKILL, out of memory) left beside `output`; an old output that a
    run killed in the middle of an overwrite had moved aside is put back first. Folders whose run is still going
    are left alone; without file locks (Windows) the folders are only named in a warning."""
    for work in _work_folders(output):
        if fcntl is None:
            warnings.warn(
                f"{work} was left by an interrupted conversion to {str(output)!r}; remove it if no other conversion "
                "is running",
                ConversionWarning,
                stacklevel=2,
            )
            continue
        marker = work / WORK_MARKER
        if not marker.exists():
            work.rmdir()
            continue
        with open(marker, "a", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("%s belongs to a conversion that is still running; left alone", work)
                continue
            _discard(work, output)
        logger.info("Removed %s, left by an interrupted conversion", work)


@contextlib.contextmanager
def new_checkpoint(output, overwrite, overwrite_flag=API_OVERWRITE):
    """A folder to write the checkpoint into; when the block ends without an error, it becomes `output` (an old
    `output` is replaced, as `check_replaceable` allows). However the block ends, nothing else is left behind."""
    work, marker = _start_work(output)
    try:
        checkpoint = work / "new" / output.name
        checkpoint.mkdir(parents=True)
        yield checkpoint
        _publish(work, output, overwrite, overwrite_flag)
    finally:
        _discard(work, output)
        marker.close()


def _start_work(output):
    """A new work folder beside `output`, with its marker written and locked. Returns `(folder, marker handle)`:
    closing the handle (or the process ending, however it ends) releases the lock."""
    parent = output.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent))
    handle = open(work / WORK_MARKER, "w", encoding="utf-8")
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_EX)
    json.dump({"written_by": WRITTEN_BY, "output": output.name, "pid": os.getpid()}, handle)
    handle.flush()
    return work, handle


def _discard(work, output):
    """Remove the work folder `work`, putting the old output back if the run stopped between the two renames of
    `_publish`. The marker goes last, so that a run killed in here still leaves a folder the next run recognises."""
    previous = work / "previous" / output.name
    if previous.exists() and not os.path.lexists(output):
        os.replace(previous, output)
        logger.warning("Put %s back: an interrupted overwrite had moved it aside", output)
    for entry in work.iterdir():
        if entry.name == WORK_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (work / WORK_MARKER).unlink(missing_ok=True)
    work.rmdir()


def _publish(work, output, overwrite, overwrite_flag):
    """Rename the complete checkpoint `work/new/NAME` to `output`. An old `output` is checked again, as it may have
    changed since the conversion started, and moved into `work/previous/` first; `_discard` removes it afterwards."""
    if os.path.lexists(output):
        check_replaceable(output, overwrite, overwrite_flag)
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        else:
            (work / "previous").mkdir()
            os.replace(output, work / "previous" / output.name)
    os.replace(work / "new" / output.name, output)
