"""The documents that `lsg-bart-summarize` reads: their ids up front, their texts when their batch comes.

Kinds of input (`open_corpus`), picked from the paths given to `--input`:

- JSON lines (`.jsonl`, `.ndjson`): one object a line, with an id field and a text field. Standard library only:
  the first pass keeps each row's id and byte offset, and a row's text is read again when its batch comes, so that
  a corpus larger than memory works.
- text files: a folder (its `*.txt` files), a glob pattern (quoted, so that the shell leaves it; its matches are
  read by their suffixes, like files given one by one) or files; the id of a document is its file name.
- CSV (`.csv`, `.tsv`), parquet (`.parquet`), JSON (`.json`) and folders written by `Dataset.save_to_disk`, through
  the `datasets` package (imported only for them).

Every id is checked before any work: present, a string or an integer, and unique. A row whose text is missing or
empty is not an error of the whole input: `Corpus.texts` returns a `BadRow` for it, which the caller reports with
its id.
"""

import glob
import json
import os
from dataclasses import dataclass

JSONL_SUFFIXES = (".jsonl", ".ndjson")
DATASETS_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".json": "json"}
# Files that `Dataset.save_to_disk` / `DatasetDict.save_to_disk` write into their folder.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")
GLOB_CHARACTERS = "*?["


class CorpusError(ValueError):
    """An input that cannot be summarised at all (a missing file, a duplicate id, ...): one line naming it."""


@dataclass(frozen=True)
class BadRow:
    """Why a row cannot be summarised (no text field, an empty text, a file that is not UTF-8)."""

    reason: str


def id_key(document_id):
    """The id as the output files compare it: its JSON text (so that 7 and "7" stay two ids)."""
    return json.dumps(document_id, ensure_ascii=False)


def text_or_bad_row(value, text_column):
    """`value` (a row's `text_column`, or `KeyError` when the row has none) if it is a non-blank string, otherwise a
    `BadRow` saying what it is."""
    if value is KeyError:
        return BadRow(f"no {text_column!r} field")
    if value is None:
        return BadRow(f"{text_column!r} is null")
    if not isinstance(value, str):
        return BadRow(f"{text_column!r} is a {type(value).__name__}, not a string")
    if not value.strip():
        return BadRow("empty text")
    return value


def checked_id(value, where, id_column):
    """`value` if it can be an id (a string or an integer), else `CorpusError` naming `where` it is."""
    if value is KeyError:
        raise CorpusError(f"{where} has no {id_column!r} field (--id_column); every row needs an id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CorpusError(
            f"{where} has the id {value!r} ({type(value).__name__}) in {id_column!r}; ids must be strings or integers"
        )
    return value


def check_unique(ids, where):
    """`CorpusError` naming the first id that occurs twice, and where (`where(index)` describes a row)."""
    first = {}
    for index, document_id in enumerate(ids):
        key = id_key(document_id)
        if key in first:
            raise CorpusError(
                f"duplicate id {document_id!r} in --input ({where(first[key])} and {where(index)}); ids must be unique"
            )
        first[key] = index


class Corpus:
    """The documents of an input: `ids` (in input order), `where(index)` (a row described for messages) and
    `texts(indices)` (their texts, or a `BadRow` each)."""

    ids = ()

    def where(self, index):
        raise NotImplementedError

    def texts(self, indices):
        raise NotImplementedError

    def __len__(self):
        return len(self.ids)


class JsonLinesCorpus(Corpus):
    """JSON lines files: ids and byte offsets read once; texts read again by offset."""

    def __init__(self, paths, id_column, text_column):
        self.paths, self.id_column, self.text_column = paths, id_column, text_column
        self.ids, self.rows = [], []  # rows: (file number, byte offset, line number)
        rows_with_text, first_fields = 0, None
        for number, path in enumerate(paths):
            offset = 0
            with open(path, "rb") as f:
                for line_number, line in enumerate(f, start=1):
                    row = self._parse(line, path, line_number)
                    if row is not None:
                        where = f"{path!r} line {line_number}"
                        self.ids.append(checked_id(row.get(id_column, KeyError), where, id_column))
                        self.rows.append((number, offset, line_number))
                        rows_with_text += text_column in row
                        first_fields = first_fields or list(row)
                    offset += len(line)
        if self.ids and not rows_with_text:  # a misspelt column rather than rows without text
            raise CorpusError(
                f"--text_column {text_column!r} is in no row of --input; the first row's fields are "
                f"{', '.join(first_fields)}"
            )
        check_unique(self.ids, self.where)

    @staticmethod
    def _parse(line, path, line_number):
        """The row on `line` (None for a blank line); `CorpusError` unless it is a JSON object."""
        if not line.strip():
            return None
        try:
            row = json.loads(line)
        except ValueError as error:  # also UnicodeDecodeError
            message = f"{path!r} line {line_number} is not JSON ({error}); --input must be JSON lines"
            raise CorpusError(message) from None
        if not isinstance(row, dict):
            raise CorpusError(f"{path!r} line {line_number} is a JSON {type(row).__name__}, not an object")
        return row

    def where(self, index):
        number, _, line_number = self.rows[index]
        return f"{self.paths[number]!r} line {line_number}"

    def texts(self, indices):
        texts = []
        files = {}  # each file opened once per call
        try:
            for index in indices:
                number, offset, line_number = self.rows[index]
                if number not in files:
                    files[number] = open(self.paths[number], "rb")
                files[number].seek(offset)
                row = self._parse(files[number].readline(), self.paths[number], line_number)
                texts.append(text_or_bad_row(row.get(self.text_column, KeyError), self.text_column))
        finally:
            for f in files.values():
                f.close()
        return texts


class TextFilesCorpus(Corpus):
    """Text files, one document each, whose id is the file name."""

    def __init__(self, paths):
        self.paths = paths
        self.ids = [os.path.basename(path) for path in paths]
        check_unique(self.ids, self.where)

    def where(self, index):
        return repr(self.paths[index])

    def texts(self, indices):
        texts = []
        for index in indices:
            try:
                with open(self.paths[index], encoding="utf-8") as f:
                    texts.append(text_or_bad_row(f.read(), "text"))
            except UnicodeDecodeError as error:
                texts.append(BadRow(f"not UTF-8 text ({error.reason} at byte {error.start})"))
            except OSError as error:
                texts.append(BadRow(f"cannot be read ({error.strerror or error})"))
        return texts


class DatasetCorpus(Corpus):
    """A `datasets.Dataset` (CSV, parquet, JSON or a saved folder), read by row number."""

    def __init__(self, dataset, id_column, text_column, name):
        for flag, column in (("--id_column", id_column), ("--text_column", text_column)):
            if column not in dataset.column_names:
                raise CorpusError(
                    f"{flag} {column!r} is not a column of {name}; its columns are {', '.join(dataset.column_names)}"
                )
        self.dataset, self.text_column = dataset, text_column
        self.ids = [checked_id(value, f"{name} row {row}", id_column) for row, value in enumerate(dataset[id_column])]
        check_unique(self.ids, lambda index: f"row {index}")

    def where(self, index):
        return f"row {index}"

    def texts(self, indices):
        column = self.dataset.select(indices)[self.text_column]
        return [text_or_bad_row(value, self.text_column) for value in column]


def file_kind(path):
    """The kind of one file, from its suffix: "jsonl", a `datasets` builder ("csv", "parquet", "json") or "text"."""
    suffix = os.path.splitext(path)[1].lower()
    return "jsonl" if suffix in JSONL_SUFFIXES else DATASETS_SUFFIXES.get(suffix, "text")


def input_kind(path):
    """(kind, file) pairs for `path`, one value of `--input`: a file, a folder (its .txt files, or a saved dataset:
    kind "saved") or a glob (each match by its suffix). `CorpusError` for a path that does not exist, a glob that
    matches nothing, a folder of neither kind."""
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, name)) for name in SAVED_DATASET_FILES):
            return [("saved", path)]
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.txt")))
        if not files:
            raise CorpusError(f"--input {path!r} is a folder with no .txt file and no saved dataset in it")
        return [("text", file) for file in files]
    if os.path.isfile(path):
        return [(file_kind(path), path)]
    if any(character in path for character in GLOB_CHARACTERS):
        files = sorted(match for match in glob.glob(path, recursive=True) if os.path.isfile(match))
        if not files:
            raise CorpusError(f"--input {path!r} matches no file")
        return [(file_kind(file), file) for file in files]
    raise CorpusError(f"--input {path!r} does not exist")


def input_files(inputs, output=None):
    """The kind of the `--input` values and their files. `CorpusError` when they mix kinds, or when one of the files
    is `output` (which a glob can match)."""
    pairs = [pair for path in inputs for pair in input_kind(path)]
    kinds = sorted({kind for kind, _ in pairs})
    if len(kinds) > 1:
        raise CorpusError(f"--input mixes {' and '.join(kinds)} files; give inputs of one kind")
    if kinds == ["saved"] and len(pairs) > 1:
        raise CorpusError("--input names several saved datasets; give one")
    paths = [path for _, path in pairs]
    if output is not None and os.path.exists(output):
        for path in paths:
            if os.path.samefile(path, output):
                raise CorpusError(f"--input {path!r} is the --output file; give another --output")
    return kinds[0], paths


def load_dataset_input(kind, paths):
    """A `datasets.Dataset` from CSV / parquet / JSON files or a saved folder; `CorpusError` when `datasets` is not
    installed or the folder holds several splits."""
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"--input {paths[0]!r} needs the datasets package (pip install datasets); JSON lines and text files do not"
        ) from None
    if kind == "saved":
        dataset = datasets.load_from_disk(paths[0])
        if isinstance(dataset, datasets.DatasetDict):
            example = os.path.join(paths[0], next(iter(dataset)))
            raise CorpusError(f"--input {paths[0]!r} holds the splits {', '.join(dataset)}; give one, e.g. {example}")
        return dataset
    options = {"delimiter": "\t"} if kind == "csv" and paths[0].lower().endswith(".tsv") else {}
    return datasets.load_dataset(kind, data_files=paths, split="train", **options)


def open_corpus(inputs, id_column="id", text_column="text", output=None):
    """The corpus of the `--input` values `inputs` (paths, folders or globs); see the module's docstring for the
    kinds. `CorpusError` (one line) for a path that is missing or of no known kind, a row without an id, a
    duplicate id, a column that no row has, or an input that is the `output` file."""
    kind, paths = input_files(inputs, output)
    if kind == "jsonl":
        return JsonLinesCorpus(paths, id_column, text_column)
    if kind == "text":
        return TextFilesCorpus(paths)
    name = repr(paths[0]) if len(paths) == 1 else f"--input ({len(paths)} files)"
    return DatasetCorpus(load_dataset_input(kind, paths), id_column, text_column, name)
