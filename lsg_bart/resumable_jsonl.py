"""The output files of `lsg-bart-summarize`: JSON lines appended as batches finish, that a killed run leaves usable.

Each line is one document: `{"id": ..., "summary": ..., "input_tokens": ..., "truncated": ...}`, or
`{"id": ..., "error": ...}` for a row that could not be summarised. Lines are appended whole, a batch at a time,
then flushed and fsync'ed: a SIGKILL can cut only the last line, which the next run completes (when only its newline
is missing) or removes (`repair_tail`; every line this program writes starts with `{"id": `, which is how a cut line
of ours is told from someone else's file).

With several processes, process 0 appends to the output itself and process k to the shard `OUTPUT.rank-k-of-N`
beside it. `fold_shard` moves a shard's complete lines into the output, skipping the ids that the output already
holds, then deletes the shard: a run killed during a fold leaves the shard, whose lines the next fold skips. So an
id is never in the output twice, and no process writes to a file that another one writes to.

A process holds an exclusive lock (`flock`) on the file it appends to, so that two runs never write to the same
output at once, and a fold never takes a shard that a live process is writing. Standard library only.
"""

import json
import os
import re
from dataclasses import dataclass, field

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one run at a time on an output is then up to the user
    fcntl = None

from .corpus import id_key

RECORD_PREFIX = b'{"id": '  # json.dumps of a dict whose first key is "id"
RETRY_SUFFIX = ".retry-errors.tmp"


class OutputError(ValueError):
    """An output or shard file that this program cannot use (not its own, or in use by another run)."""


def record_line(record):
    """`record` (a dict whose first key is "id") as one line of the output, in bytes."""
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def parse_record(line, path, number):
    """The record on a complete line; `OutputError` naming `path` and the line `number` unless this program could
    have written it."""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not (
        line.startswith(RECORD_PREFIX) and isinstance(record, dict) and ("summary" in record or "error" in record)
    ):
        raise OutputError(
            f"{path!r} line {number} is not a line that lsg-bart-summarize writes (an object with an id and a "
            "summary or an error); give another --output"
        )
    return record


@dataclass
class Scan:
    """What a scan of an output or shard file found: the ids of its complete lines (key -> whether the line is an
    error), the bytes those lines take, and what follows them (a line without its newline)."""

    keys: dict = field(default_factory=dict)
    complete_bytes: int = 0
    tail: bytes = b""


def scan(path, on_record=None):
    """Read `path` (a missing file reads as empty); `on_record(record, line)` is called for each complete line.
    `OutputError` for a complete line that is not this program's."""
    result = Scan()
    if not os.path.exists(path):
        return result
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                result.tail = line
                break
            record = parse_record(line, path, number)
            result.keys.setdefault(id_key(record["id"]), "error" in record)
            if on_record is not None:
                on_record(record, line)
            result.complete_bytes += len(line)
    return result


def cut_line_of_ours(tail):
    """Whether `tail` (the bytes after the last newline) is the start of a line this program writes."""
    return tail.startswith(RECORD_PREFIX) or RECORD_PREFIX.startswith(tail)


def repair_tail(path, found):
    """Make `path` end with a complete line, given its `scan`: a last line that only lacks its newline gets it (and
    joins `found.keys`); a cut line of ours is removed. Returns what was done, for a warning, or None. `OutputError`
    when the tail is not ours."""
    if not found.tail:
        return None
    try:
        record = parse_record(found.tail, path, "(last)")
    except OutputError:
        record = None
    if record is not None:
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        found.keys.setdefault(id_key(record["id"]), "error" in record)
        found.complete_bytes += len(found.tail) + 1
        found.tail = b""
        return f"{path}: added the newline missing from its last line"
    if not cut_line_of_ours(found.tail):
        raise OutputError(f"{path!r} ends with a line that lsg-bart-summarize did not write; give another --output")
    os.truncate(path, found.complete_bytes)
    removed, found.tail = len(found.tail), b""
    return f"{path}: removed a cut last line ({removed} bytes) left by a killed run; its id is summarised again"


def lock(handle, path):
    """Hold an exclusive lock on the open file `handle` until it is closed; `OutputError` if another process holds
    one."""
    if fcntl is None:
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(
            f"{path!r} is in use by another running lsg-bart-summarize; wait for it to end or give another --output"
        ) from None


class Appender:
    """Appends records to a file (created if missing) that it holds locked: whole lines, flushed and fsync'ed."""

    def __init__(self, path):
        self.path = path
        self.created = not os.path.exists(path)  # so that a run that fails can remove the empty file it made
        self.file = open(path, "ab")
        lock(self.file, path)

    def append(self, records):
        """Append `records` (dicts whose first key is "id") as lines, durably."""
        if records:
            self.append_lines([record_line(record) for record in records])

    def append_lines(self, lines):
        """Append complete lines (bytes, each ending with a newline), durably."""
        self.file.write(b"".join(lines))
        self.file.flush()
        os.fsync(self.file.fileno())

    def replace_with(self, lines):
        """Replace the file by one holding `lines` only: written beside it, then renamed over it (the file is the old
        one or the new one, whole, at any moment); the lock moves to the new file."""
        temporary = os.path.join(os.path.dirname(self.path) or ".", f".{os.path.basename(self.path)}{RETRY_SUFFIX}")
        new = open(temporary, "wb")
        lock(new, temporary)
        new.write(b"".join(lines))
        new.flush()
        os.fsync(new.fileno())
        os.replace(temporary, self.path)
        self.file.close()
        new.close()
        self.file = open(self.path, "ab")
        lock(self.file, self.path)

    def close(self):
        self.file.close()

    def close_after_failure(self):
        """Close, and remove the file if this run created it and wrote nothing to it."""
        self.close()
        if self.created and os.path.getsize(self.path) == 0:
            os.remove(self.path)


def shard_path(output, rank, world_size):
    """The file that process `rank` of `world_size` (rank > 0) appends to."""
    return f"{output}.rank-{rank:05d}-of-{world_size:05d}"


def shards_beside(output):
    """The shard files of any run on `output` (this one's or killed ones'), sorted."""
    folder = os.path.dirname(output) or "."
    name = re.compile(re.escape(os.path.basename(output)) + r"\.rank-\d{5}-of-\d{5}")
    return sorted(os.path.join(folder, entry) for entry in os.listdir(folder) if name.fullmatch(entry))


def fold_shard(shard, output, keys):
    """Append the complete lines of `shard` whose ids are not in `keys` (the output's ids, updated) to `output` (an
    `Appender`), then delete the shard. Returns the records moved. `OutputError`, with the shard left as it is, when
    a live process holds it or a line in it is not this program's."""
    moved = {}

    def take(record, line):
        key = id_key(record["id"])
        if key not in keys and key not in moved:
            moved[key] = (line, record)

    with open(shard, "rb") as handle:
        lock(handle, shard)
        found = scan(shard, take)
        if found.tail and not cut_line_of_ours(found.tail):
            raise OutputError(f"{shard!r} ends with a line that lsg-bart-summarize did not write; it is left as it is")
        output.append_lines([line for line, _ in moved.values()])
        os.remove(shard)
    for key, (_, record) in moved.items():
        keys[key] = "error" in record
    return [record for _, record in moved.values()]
