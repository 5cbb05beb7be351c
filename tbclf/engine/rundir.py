"""Run folders `runs/<name>/version_N/`: claimed atomically, found again for resume and predict."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from pytorch_lightning.loggers import TensorBoardLogger

from tbclf.data.layouts import discover
from tbclf.data.records import Record
from tbclf.data.splits import load_split
from tbclf.errors import ConfigError
from tbclf.io import atomic_write_text

VERSION_ENV = "TBCLF_RUN_VERSION"
STAGE_ENV = "TBCLF_STAGE_VERSION"
_VERSION_RE = re.compile(r"^version_(\d+)$")
# What a run writes before it has produced anything of its own; a failed run with only these
# is removed, so runs/ lists real runs.
_BOOKKEEPING = re.compile(
    r"^(events\.out\.tfevents\..*|hparams\.yaml|config.*\.yaml|split.*\.json)$"
)
# Folders claimed by this process (a new run or a later stage's folder), for discard_failed().
CLAIMED: list[Path] = []
# Existing run folders a resumed fit writes to: marked on failure, never removed.
RESUMED: list[Path] = []


def existing_versions(save_dir: str | os.PathLike, name: str) -> list[int]:
    """Version numbers present under save_dir/name, ascending."""
    base = Path(save_dir) / name
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        match = _VERSION_RE.match(entry.name)
        if match and entry.is_dir():
            found.append(int(match.group(1)))
    return sorted(found)


def claim_version(save_dir: str | os.PathLike, name: str) -> int:
    """Create the next free version folder with an exclusive mkdir.

    Two runs started at once in the same folder each get their own version: mkdir fails for the
    loser, which moves on to the next number instead of sharing (and overwriting) the folder.
    """
    base = Path(save_dir) / name
    base.mkdir(parents=True, exist_ok=True)
    versions = existing_versions(save_dir, name)
    candidate = versions[-1] + 1 if versions else 0
    while True:
        try:
            (base / f"version_{candidate}").mkdir()
        except FileExistsError:
            candidate += 1
            continue
        CLAIMED.append(base / f"version_{candidate}")
        return candidate


def stage_version(run_dir: Path, stage: str) -> str:
    """The logger version of a later stage (test, validate, predict) of a run:
    ``version_N/<stage>-<time>``, a fresh folder inside the run claimed with an exclusive mkdir.

    Later stages keep their TensorBoard events, config, split and report apart from training's,
    so TensorBoard shows one training curve per run and no stage overwrites another's files.
    DDP workers reuse the folder their launcher claimed.
    """
    inherited = os.environ.get(STAGE_ENV)
    if inherited is not None and os.environ.get("LOCAL_RANK") not in (None, "0"):
        return inherited
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        name = f"{stage}-{stamp}" + (f"-{k}" if k else "")
        try:
            (run_dir / name).mkdir()
        except FileExistsError:
            continue
        CLAIMED.append(run_dir / name)
        version = f"{run_dir.name}/{name}"
        os.environ[STAGE_ENV] = version
        return version
    raise ConfigError(f"cannot claim a {stage} folder in {run_dir}")


def discard_failed(
    error: BaseException | str, note: Callable[[Path], str] | None = None
) -> list[tuple[Path, bool]]:
    """After a failed command: remove the folders it claimed that hold nothing but bookkeeping
    files, and mark the others (a run that wrote checkpoints, a resumed run) with failed.txt
    (the error, then ``note(folder)``). Returns (folder, removed) for each folder it dealt with."""
    dealt: list[tuple[Path, bool]] = []
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    while CLAIMED or RESUMED:
        claimed = bool(CLAIMED)
        folder = CLAIMED.pop() if claimed else RESUMED.pop()
        if not folder.is_dir():
            continue
        made = [p for p in folder.rglob("*") if p.is_file() and not _BOOKKEEPING.match(p.name)]
        if claimed and not made:
            shutil.rmtree(folder, ignore_errors=True)
            dealt.append((folder, True))
            continue
        extra = note(folder) if note is not None else ""
        try:
            atomic_write_text(folder / "failed.txt", f"{text}\n{extra}".rstrip() + "\n")
        except OSError:
            pass  # a full disk: the error being reported already says so
        dealt.append((folder, False))
    return dealt


def find_checkpoint(save_dir: str | os.PathLike, name: str, which: str) -> Path:
    """The newest run's `best.ckpt` or `last.ckpt`, for `--ckpt_path best|last`."""
    filename = f"{which}.ckpt"
    for version in reversed(existing_versions(save_dir, name)):
        candidate = Path(save_dir) / name / f"version_{version}" / "checkpoints" / filename
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"--ckpt_path {which}: no {filename} under {Path(save_dir) / name}/version_*/checkpoints/. "
        "Train first with `python -m tbclf fit --config ...`, or pass the checkpoint's path."
    )


def run_dir_of(checkpoint: str | os.PathLike) -> Path | None:
    """The run folder a checkpoint belongs to (`.../version_N`), if it sits in one."""
    path = Path(checkpoint)  # not resolved: Lightning compares the folder with the saved one
    if path.parent.name == "checkpoints" and _VERSION_RE.match(path.parent.parent.name):
        return path.parent.parent
    return None


def run_split(
    run_dir: Path, needed_for: str = "this", otherwise: str = ""
) -> dict[str, list[Record]]:
    """The run's split.json mapped back onto its data (labels included); the errors say what
    ``needed_for`` it and what to do ``otherwise``."""
    split_json = Path(run_dir) / "split.json"
    if not split_json.is_file():
        raise ConfigError(f"{needed_for}, but {split_json} does not exist. {otherwise}".strip())
    try:
        doc = json.loads(split_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{split_json} is unreadable ({exc}).") from None
    root = Path(doc.get("root") or ".")
    if not root.is_dir():
        raise ConfigError(
            f"{split_json} was made for data under {root}, which is not here; {needed_for}. "
            "Run where the data is."
        )
    records = discover(root, doc.get("layout") or "auto")
    return load_split(split_json, records, root)


def split_lists(run_dir: Path) -> dict[str, object] | None:
    """The raw root and per-split path lists of a run's split.json (None when unreadable)."""
    try:
        doc = json.loads((Path(run_dir) / "split.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("splits"), dict):
        return None
    return {"root": doc.get("root"), **doc["splits"]}


class RunLogger(TensorBoardLogger):
    """TensorBoard logger whose new version folders are claimed atomically.

    The version is decided once in the launching process and handed to DDP workers through the
    environment, so all ranks write to the same folder.
    """

    def __init__(
        self,
        save_dir: str = "runs",
        name: str = "tbclf",
        version: int | str | None = None,
        **kwargs,
    ) -> None:
        if version is None:
            inherited = os.environ.get(VERSION_ENV)
            if inherited is not None and os.environ.get("LOCAL_RANK") not in (None, "0"):
                version = int(inherited)
            else:
                version = claim_version(save_dir, name)
                os.environ[VERSION_ENV] = str(version)
        super().__init__(
            save_dir=save_dir, name=name, version=version, default_hp_metric=False, **kwargs
        )
