"""Content hashes, duplicate groups and leakage-free stratified splits (fractions or k folds).

A split is made over *groups*, never single files: byte-identical files, plus whatever
`link_groups` joins to them (near-duplicates, the images of one patient), so an image and its
copy, or two images of one patient, can never sit on both sides of the train/test line. Groups
are ordered by content hash before any random draw, so the same seed gives the same split
whatever order the records arrive in (and, without links, the same split as before links).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from tbclf.data.records import Record
from tbclf.errors import ConfigError, DataError
from tbclf.io import atomic_write_text, file_sha256

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SPLIT_FILE_VERSION = 1
_HASH_MEMO_VERSION = 1

Split = dict[str, list[Record]]


# --------------------------------------------------------------------------- hashing


def image_sha256(path: Path) -> str:
    """sha256 of an image file's bytes (the identity used for duplicates and cache keys), with
    errors that name the image."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise DataError(f"Image {path} does not exist (was it moved during the run?).") from None
    except OSError as exc:
        raise DataError(
            f"Image {path} cannot be read ({exc.strerror or exc}). Fix its permissions or "
            "remove it."
        ) from None


def _stat_key(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def hash_files(
    records: Iterable[Record], memo_file: Path | None = None, num_threads: int = 4
) -> dict[Path, str]:
    """{record.path: sha256} for every record.

    With memo_file, hashes are remembered by (path, size, mtime) so later runs do not re-read
    every full-resolution original (gigabytes for the NLM sets) just to find their cache entry.
    """
    paths = sorted({Path(r.path) for r in records})
    memo: dict[str, Any] = {}
    if memo_file is not None:
        memo = _read_memo(Path(memo_file))
    out: dict[Path, str] = {}
    todo: list[Path] = []
    stats: dict[Path, list[int]] = {}
    for p in paths:
        try:
            stats[p] = _stat_key(p)
        except FileNotFoundError:
            raise DataError(f"Image {p} does not exist.") from None
        hit = memo.get(str(p.resolve()))
        if hit is not None and hit[:2] == stats[p]:
            out[p] = hit[2]
        else:
            todo.append(p)
    if todo:
        # hashlib releases the GIL on large buffers, so threads overlap disk reads and hashing.
        with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
            for p, digest in zip(todo, pool.map(image_sha256, todo), strict=True):
                out[p] = digest
        if memo_file is not None:
            for p in todo:
                memo[str(p.resolve())] = [*stats[p], out[p]]
            _write_memo(Path(memo_file), memo)
    return out


def _read_memo(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _HASH_MEMO_VERSION:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_memo(path: Path, files: dict[str, Any]) -> None:
    try:
        atomic_write_text(path, json.dumps({"version": _HASH_MEMO_VERSION, "files": files}))
    except OSError as exc:  # a read-only cache dir only costs re-hashing next time
        log.warning("Could not write the file-hash memo %s: %s", path, exc)


# --------------------------------------------------------------------------- duplicates


def _hash_of(record: Record, hashes: Mapping[Path, str]) -> str:
    try:
        return hashes[Path(record.path)]
    except KeyError:
        raise KeyError(f"no content hash for {record.path}; call hash_files first") from None


def link_groups(
    records: Sequence[Record], hashes: Mapping[Path, str], *links: Mapping[Path, str]
) -> dict[Path, str]:
    """{path: group key}: images sharing a content hash or a key of any `links` mapping are one
    group (connected components); a group's key is the smallest content hash in it."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:  # the smaller content hash becomes the root
            parent[max(ra, rb)] = min(ra, rb)

    for r in records:
        find("h" + _hash_of(r, hashes))
    for mapping in links:
        first: dict[str, str] = {}
        for r in records:
            key = mapping.get(Path(r.path))
            if key is None:
                continue
            node = "h" + _hash_of(r, hashes)
            union(first.setdefault(key, node), node)
    return {Path(r.path): find("h" + _hash_of(r, hashes))[1:] for r in records}


def linked_groups(records: Sequence[Record], groups: Mapping[Path, str]) -> list[list[Record]]:
    """The groups of 2+ images that are more than byte-identical copies, sorted (for reports
    and the split file)."""
    by_key: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_key[groups[Path(r.path)]].append(r)
    out = [
        sorted(g, key=lambda r: (str(r.path), r.id)) for g in by_key.values() if len(g) > 1
    ]  # fmt: skip
    return sorted(out, key=lambda g: str(g[0].path))


def _groups(
    records: Sequence[Record],
    hashes: Mapping[Path, str],
    links: Mapping[Path, str] | None = None,
) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        key = links.get(Path(r.path)) if links else None
        groups[key if key is not None else _hash_of(r, hashes)].append(r)
    for members in groups.values():
        members.sort(key=lambda r: (str(r.path), r.id))
    return dict(groups)


def find_duplicates(records: Sequence[Record], hashes: Mapping[Path, str]) -> list[list[Record]]:
    """Groups of byte-identical files (2+ members), sorted; conflicting labels are an error."""
    dups = [g for g in _groups(records, hashes).values() if len(g) > 1]
    conflicts = [g for g in dups if len({r.label for r in g}) > 1]
    if conflicts:
        lines = "; ".join(
            ", ".join(f"{r.path} (label {r.label})" for r in g) for g in conflicts[:10]
        )
        raise DataError(
            f"{len(conflicts)} group(s) of byte-identical images carry different labels: {lines}. "
            "The same image cannot be both healthy and TB: fix or remove the wrong copy."
        )
    dups.sort(key=lambda g: str(g[0].path))
    return dups


def describe_duplicates(groups: Sequence[Sequence[Record]]) -> str:
    return "; ".join(" = ".join(str(r.path) for r in g) for g in groups)


# --------------------------------------------------------------------------- splitting


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(
            f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive): the "
            "validation set picks the operating threshold and the best checkpoint."
        )
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction={test_fraction} must be in [0, 1).")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} leaves no "
            "training images; make them smaller."
        )


def _check_labeled(records: Sequence[Record]) -> None:
    unlabeled = [r for r in records if r.label is None]
    if unlabeled:
        names = ", ".join(str(r.path) for r in unlabeled[:5])
        raise DataError(
            f"{len(unlabeled)} training image(s) have no label (e.g. {names}). Training data needs "
            "labels; use data.predict_root for unlabeled images."
        )


def _strata(
    records: Sequence[Record],
    hashes: Mapping[Path, str],
    groups: Mapping[Path, str] | None = None,
) -> dict[tuple[int, str], list[list[Record]]]:
    """Groups by (label, source) of their first member, each list sorted by group key."""
    _check_labeled(records)
    find_duplicates(records, hashes)  # raises on label conflicts
    strata: dict[tuple[int, str], list[tuple[str, list[Record]]]] = defaultdict(list)
    for digest, members in _groups(records, hashes, groups).items():
        first = members[0]
        strata[(int(first.label), first.source)].append((digest, members))  # type: ignore[arg-type]
    return {k: [m for _, m in sorted(v, key=lambda t: t[0])] for k, v in sorted(strata.items())}


def _allocate(sizes: Sequence[int], fraction: float) -> list[int]:
    """Per-stratum counts that sum to round(total * fraction) (largest remainder method)."""
    total = sum(sizes)
    target = int(round(total * fraction))
    exact = [s * fraction for s in sizes]
    counts = [int(np.floor(e)) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order:
        if sum(counts) >= target:
            break
        if counts[i] < sizes[i]:
            counts[i] += 1
    return counts


def _take(
    strata: Mapping[tuple[int, str], list[list[Record]]], fraction: float, rng: np.random.Generator
) -> tuple[dict[tuple[int, str], list[list[Record]]], dict[tuple[int, str], list[list[Record]]]]:
    """Stratified random pick of `fraction` of the groups: (picked, rest), both by stratum."""
    keys = list(strata)
    counts = _allocate([len(strata[k]) for k in keys], fraction)
    picked, rest = {}, {}
    for k, n in zip(keys, counts, strict=True):
        groups = strata[k]
        perm = rng.permutation(len(groups))
        picked[k] = [groups[i] for i in sorted(perm[:n])]
        rest[k] = [groups[i] for i in sorted(perm[n:])]
    return picked, rest


def _flatten(by_stratum: Mapping[Any, list[list[Record]]]) -> list[Record]:
    out = [r for groups in by_stratum.values() for g in groups for r in g]
    return sorted(out, key=lambda r: (str(r.path), r.id))


def class_counts(records: Iterable[Record]) -> dict[int | None, int]:
    return dict(sorted(Counter(r.label for r in records).items(), key=lambda kv: str(kv[0])))


def check_split(split: Mapping[str, Sequence[Record]]) -> None:
    """Every split that is used needs two classes or more, or AUC/thresholds are meaningless."""
    for name in SPLIT_NAMES:
        members = split.get(name, [])
        if name == "test" and not members:
            continue
        labels = {r.label for r in members}
        if len(labels) < 2:
            counts = {name2: class_counts(split.get(name2, [])) for name2 in SPLIT_NAMES}
            raise DataError(
                f"The {name} split has {len(members)} image(s) with {len(labels)} class(es) "
                f"(label counts per split: {counts}); it needs two (healthy (0) and TB (1)). Use "
                "larger data.val_fraction / data.test_fraction, another data.seed, fewer "
                "data.num_folds, or more data."
            )


def make_split(
    records: Sequence[Record],
    hashes: Mapping[Path, str],
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    groups: Mapping[Path, str] | None = None,
) -> Split:
    """Stratified (label, source) train/val/test split over groups (duplicates, or
    `link_groups`' keys when given), fixed by seed."""
    _check_fractions(val_fraction, test_fraction)
    strata = _strata(records, hashes, groups)
    rng = np.random.default_rng(seed)
    test, rest = _take(strata, test_fraction, rng)
    # val_fraction is of the whole data set, so rescale it to what is left after test.
    val, train = _take(rest, val_fraction / (1.0 - test_fraction), rng)
    split = {"train": _flatten(train), "val": _flatten(val), "test": _flatten(test)}
    check_split(split)
    return split


def fold_assignment(
    records: Sequence[Record],
    hashes: Mapping[Path, str],
    seed: int,
    num_folds: int,
    groups: Mapping[Path, str] | None = None,
) -> dict[Path, int]:
    """{path: fold} with groups dealt round-robin per stratum, so folds are stratified."""
    strata = _strata(records, hashes, groups)
    rng = np.random.default_rng(seed)
    out: dict[Path, int] = {}
    offset = 0  # continue dealing where the last stratum stopped: balances fold sizes overall
    for groups in strata.values():
        perm = rng.permutation(len(groups))
        for j, gi in enumerate(perm):
            for r in groups[gi]:
                out[Path(r.path)] = (offset + j) % num_folds
        offset += len(groups)
    return out


def make_fold_split(
    records: Sequence[Record],
    hashes: Mapping[Path, str],
    seed: int,
    num_folds: int,
    fold: int,
    val_fraction: float = 0.15,
    groups: Mapping[Path, str] | None = None,
) -> Split:
    """test = fold `fold` of a stratified k-fold partition; val = val_fraction of the rest."""
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ConfigError(f"data.num_folds={num_folds} must be an integer >= 2 (or null).")
    if not 0 <= fold < num_folds:
        raise ConfigError(f"data.fold={fold} must be in 0..{num_folds - 1} for {num_folds} folds.")
    _check_fractions(val_fraction, 0.0)
    folds = fold_assignment(records, hashes, seed, num_folds, groups)
    test = [r for r in records if folds[Path(r.path)] == fold]
    rest = [r for r in records if folds[Path(r.path)] != fold]
    # A separate stream per fold: the val pick of fold 2 does not depend on folds 0 and 1.
    rng = np.random.default_rng([seed, num_folds, fold])
    return _with_val(test, rest, hashes, groups, val_fraction, rng)


def _with_val(
    test: Sequence[Record],
    rest: Sequence[Record],
    hashes: Mapping[Path, str],
    groups: Mapping[Path, str] | None,
    val_fraction: float,
    rng: np.random.Generator,
) -> Split:
    """A split whose test set is given: validation is a stratified pick from the rest."""
    val, train = _take(_strata(rest, hashes, groups), val_fraction, rng)
    split = {
        "train": _flatten(train),
        "val": _flatten(val),
        "test": sorted(test, key=lambda r: (str(r.path), r.id)),
    }
    check_split(split)
    return split


def make_source_split(
    records: Sequence[Record],
    hashes: Mapping[Path, str],
    seed: int,
    test_sources: Sequence[str],
    train_sources: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    groups: Mapping[Path, str] | None = None,
) -> Split:
    """test = every image of `test_sources` (a site the model never saw); train/val =
    `train_sources` (default: all other sources), val stratified. A group (duplicates,
    near-duplicates, a patient) with an image in the test sources goes wholly to test, so no
    copy of a test image is trained on."""
    known = sorted({r.source for r in records})
    test_set, train_set = set(test_sources), set(train_sources or [])
    for name, chosen in (("test_sources", test_set), ("train_sources", train_set)):
        unknown = sorted(chosen - set(known))
        if unknown:
            raise ConfigError(
                f"data.{name}: no images from source(s) {unknown}; the sources found are {known}."
            )
    if not test_set:
        raise ConfigError(f"data.test_sources is empty; name one or more of {known}.")
    if test_set & train_set:
        raise ConfigError(
            f"data.train_sources and data.test_sources share {sorted(test_set & train_set)}: "
            "a held-out site cannot also be trained on."
        )
    _check_fractions(val_fraction, 0.0)
    keys = {Path(r.path): (groups or {}).get(Path(r.path)) or _hash_of(r, hashes) for r in records}
    held = {keys[Path(r.path)] for r in records if r.source in test_set}
    test = [r for r in records if keys[Path(r.path)] in held]
    rest = [
        r
        for r in records
        if keys[Path(r.path)] not in held and (not train_set or r.source in train_set)
    ]
    # A stream per held-out set: which sources are held out, not the order they were named.
    rng = np.random.default_rng([seed, *(known.index(s) for s in sorted(test_set))])
    return _with_val(test, rest, hashes, groups, val_fraction, rng)


# --------------------------------------------------------------------------- split files


def relative_path(path: Path, root: Path) -> str:
    """Posix path relative to root (absolute when outside it), the form split files store."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def save_split(path: Path, split: Mapping[str, Sequence[Record]], root: Path, meta: dict) -> None:
    """Write the split as JSON of root-relative posix paths, so it travels with the data."""
    root = Path(root).resolve()
    doc: dict[str, Any] = {"version": SPLIT_FILE_VERSION, "seed": meta.get("seed")}
    doc["root"] = str(root)
    doc["splits"] = {
        name: sorted(relative_path(r.path, root) for r in split.get(name, []))
        for name in SPLIT_NAMES
    }
    doc["counts"] = {
        name: {str(k): v for k, v in class_counts(split.get(name, [])).items()}
        for name in SPLIT_NAMES
    }
    for k, v in meta.items():
        doc.setdefault(k, v)
    atomic_write_text(Path(path), json.dumps(doc, indent=1) + "\n")


def load_split(path: Path, records: Sequence[Record], root: Path) -> Split:
    """Map a split file back onto discovered records; every listed path must exist among them."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"data.split_file={path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise DataError(
            f"data.split_file={path} is not a readable JSON split file: {exc}"
        ) from None
    if not isinstance(doc, dict) or doc.get("version") != SPLIT_FILE_VERSION:
        raise DataError(
            f"data.split_file={path} is not a version-{SPLIT_FILE_VERSION} tbclf split file "
            "(expected keys 'version' and 'splits')."
        )
    splits = doc.get("splits")
    if not isinstance(splits, dict) or not all(
        isinstance(splits.get(n), list) for n in ("train", "val")
    ):
        raise DataError(f"data.split_file={path} has no 'splits' with 'train' and 'val' lists.")
    root = Path(root).resolve()
    index = {relative_path(r.path, root): r for r in records}
    out: Split = {}
    seen: dict[str, str] = {}
    for name in SPLIT_NAMES:
        members: list[Record] = []
        for rel in splits.get(name, []) or []:
            if rel not in index:
                raise DataError(
                    f"data.split_file={path} lists {rel!r} in '{name}', but no such image was "
                    f"found under data.root={root}. Point data.root at the data the split was made "
                    "for, or make a new split (data.split_file=null)."
                )
            if rel in seen:
                raise DataError(
                    f"data.split_file={path} lists {rel!r} in both '{seen[rel]}' and '{name}'."
                )
            seen[rel] = name
            members.append(index[rel])
        out[name] = sorted(members, key=lambda r: (str(r.path), r.id))
    check_split(out)
    return out
