"""Prediction rows on disk as they come, so an archive of any size is scored in flat memory and
a killed run resumes where it stopped.

Each process (DDP rank) appends its rows to parts: small CSV files in ``<output>.parts/``, each
written atomically, so a part is either complete on disk or absent. Rows carry the image ID and
its position in the full image list (never Lightning's batch indices), so the parts of every
rank, and of every earlier attempt, merge into one file in list order; an image met twice (the
repeats DistributedSampler pads with) is kept once. A ``manifest.json`` pins the model and the
image list the parts belong to: a rerun of the same command skips the IDs already in parts,
another model or image list starts afresh.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tbclf.data.predict_set import SCORED, UNREADABLE
from tbclf.errors import DataError
from tbclf.io import atomic_write_json, read_output_csv, write_csv

PART_FIELDS = ["INDEX", "ID", "PROB", "DECISION", "TRUE_LABEL", "STATUS", "PATH", "WHY"]
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PartRow:
    """One image's outcome: scored (prob, decision), unreadable or left out (path, why)."""

    index: int
    id: str
    prob: float = math.nan
    decision: int = 0
    truth: int | None = None
    status: str = SCORED
    path: str = ""
    why: str = ""

    def cells(self) -> list[Any]:
        return [
            self.index,
            self.id,
            repr(float(self.prob)),
            self.decision,
            "" if self.truth is None else self.truth,
            self.status,
            self.path,
            self.why,
        ]

    @classmethod
    def from_cells(cls, cells: dict[str, str]) -> PartRow:
        truth = cells["TRUE_LABEL"]
        return cls(
            index=int(cells["INDEX"]),
            id=cells["ID"],
            prob=float(cells["PROB"]),
            decision=int(cells["DECISION"]),
            truth=None if truth == "" else int(truth),
            status=cells["STATUS"],
            path=cells["PATH"],
            why=cells["WHY"],
        )


def parts_dir(output: Path) -> Path:
    """Where the parts of ``output`` live until they are merged into it."""
    return output.with_name(output.name + ".parts")


def run_key(record: dict[str, Any], inputs: str | None, model_digest: str | None) -> str:
    """What the parts depend on: the model (its record and file) and the image list."""
    text = json.dumps(
        {"record": record, "inputs": inputs, "model": model_digest}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def inputs_digest(items: Iterable[tuple[str, str]]) -> str:
    """A digest of the (ID, path) list in order: a rerun on another list starts afresh."""
    digest = hashlib.sha256()
    for ident, path in items:
        digest.update(f"{ident}\0{path}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(folder: Path, key: str) -> bool:
    """Make ``folder`` hold parts for ``key`` only (rank 0, before anyone writes).

    Returns True when earlier parts of the same run are kept (a resume); parts of another model
    or image list are removed (they could never be merged with these).
    """
    manifest = folder / MANIFEST
    if folder.is_dir():
        try:
            kept = json.loads(manifest.read_text(encoding="utf-8")).get("key") == key
        except (OSError, ValueError, AttributeError):
            kept = False
        if kept:
            return any(_part_files(folder))
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    atomic_write_json(manifest, {"key": key, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return False


def _part_files(folder: Path) -> list[Path]:
    """Complete parts only: a temporary file a kill left behind starts with a dot."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))


def read_part(path: Path) -> list[PartRow]:
    _, rows = read_output_csv(path)
    try:
        return [PartRow.from_cells(cells) for cells in rows]
    except (KeyError, ValueError) as exc:
        raise DataError(
            f"{path} is not a prediction part tbclf wrote ({exc}); delete {path.parent} to "
            "score every image again."
        ) from None


def done_ids(folder: Path) -> set[str]:
    """The IDs earlier attempts already wrote (scored, unreadable or left out)."""
    return {row.id for part in _part_files(folder) for row in read_part(part)}


class PartWriter:
    """One process's rows, written as parts of ``rows_per_part`` rows (or fewer, at the end).

    A stream is a run of parts whose rows ascend in list position; a row that goes back (a
    padding repeat) starts a new stream, so each stream merges in order.
    """

    def __init__(self, folder: Path, rank: int, rows_per_part: int = 1000) -> None:
        self.folder = folder
        self.rows_per_part = max(1, int(rows_per_part))
        self.token = f"{time.time_ns():x}-{os.getpid():x}-r{int(rank)}"
        self.stream = 0
        self.seq = 0
        self.last = -1
        self.rows: list[PartRow] = []
        self.written = 0

    def add(self, row: PartRow) -> None:
        if row.index <= self.last:
            self.flush()
            self.stream += 1
        self.last = row.index
        self.rows.append(row)
        if len(self.rows) >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        name = f"{self.token}.{self.stream:04d}.{self.seq:08d}.csv"
        write_csv(self.folder / name, PART_FIELDS, (r.cells() for r in self.rows))
        self.written += len(self.rows)
        self.seq += 1
        self.rows = []


def _streams(folder: Path) -> list[Iterator[PartRow]]:
    """One lazily read iterator per stream, its parts in order (one file open at a time)."""
    groups: dict[str, list[Path]] = {}
    for part in _part_files(folder):
        token, stream, _seq, _ = part.name.rsplit(".", 3)
        groups.setdefault(f"{token}.{stream}", []).append(part)
    return [
        itertools.chain.from_iterable(read_part(p) for p in sorted(parts))
        for _, parts in sorted(groups.items())
    ]


def merged_rows(folder: Path) -> Iterator[PartRow]:
    """Every part's rows in list order, each position once."""
    last = None
    for row in heapq.merge(*_streams(folder), key=lambda r: r.index):
        if row.index == last:
            continue
        last = row.index
        yield row


# The sidecar names the first of the images not scored; all of them go to a CSV beside it, so a
# PACS export with 100,000 CT series neither bloats the sidecar nor fills memory.
LISTED = 50


@dataclass
class MergeSummary:
    n_scored: int
    with_truth: bool
    unreadable: list[dict[str, str]]  # the first LISTED of them
    left_out: list[dict[str, str]]  # the first LISTED of them
    positions: int
    n_unreadable: int = 0
    n_left_out: int = 0

    @property
    def n_not_scored(self) -> int:
        return self.n_unreadable + self.n_left_out


def summarize(folder: Path) -> MergeSummary:
    """First pass over the parts: counts, whether any image has a label, the first images of
    each kind not scored (memory stays flat however many there are)."""
    n, truth, positions = 0, False, 0
    counts = {UNREADABLE: 0, "left_out": 0}
    unreadable: list[dict[str, str]] = []
    left_out: list[dict[str, str]] = []
    for row in merged_rows(folder):
        positions += 1
        if row.status == SCORED:
            n += 1
            truth = truth or row.truth is not None
            continue
        kind = UNREADABLE if row.status == UNREADABLE else "left_out"
        counts[kind] += 1
        listed = unreadable if kind == UNREADABLE else left_out
        if len(listed) < LISTED:
            listed.append({"id": row.id, "path": row.path, "why": row.why})
    return MergeSummary(
        n, truth, unreadable, left_out, positions, counts[UNREADABLE], counts["left_out"]
    )


def not_scored_rows(folder: Path) -> Iterator[list[str]]:
    """Every image not scored, in list order, as ID, PATH, STATUS, WHY."""
    for row in merged_rows(folder):
        if row.status != SCORED:
            yield [row.id, row.path, row.status, row.why]


def scored_rows(folder: Path) -> Iterator[PartRow]:
    return (row for row in merged_rows(folder) if row.status == SCORED)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def listing(entries: Sequence[dict[str, str]], total: int, limit: int = 10) -> str:
    shown = "; ".join(f"{e['path'] or e['id']} ({e['why']})" for e in entries[:limit])
    more = f"; ... and {total - limit} more" if total > limit else ""
    return shown + more
