"""A resumed run trains on the data it started with.

`--resume` after the training file changed went on with the new records, no
word said: the first half of the run saw one data set and the second another,
in an order shuffled for neither. The run records the hash of its training file
when it starts; a resume with other bytes in that file is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import QloraError

DATA_RECORD = ".qlora4080-data.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def guard_training_data(checkpoint: Path, train_file: Path, resuming: bool) -> str | None:
    """Record the training file's hash (new run) or compare it (resume); a note for the log, or None."""
    record_path = checkpoint / DATA_RECORD
    digest = file_sha256(train_file)
    if not resuming:
        record_path.write_text(json.dumps({"train": str(train_file.resolve()), "sha256": digest}), encoding="utf-8")
        return None
    try:
        recorded = json.loads(record_path.read_text(encoding="utf-8"))
        before = recorded["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"note: this run recorded no hash of its training data, so {train_file} is not compared"
    if before != digest:
        raise QloraError(f"the training data changed since run '{checkpoint.name}' started: {train_file} has other "
                         "contents now, and resuming would train the rest of the run on different records",
                         where="--resume", hint="restore the file the run started with, or start a new run "
                         "(without --resume) on the new data")
    return None
