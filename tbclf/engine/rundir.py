"""Run folders `runs/<name>/version_N/`: claimed atomically, found again for resume and predict."""

from __future__ import annotations

import os
import re
from pathlib import Path

from pytorch_lightning.loggers import TensorBoardLogger

from tbclf.errors import ConfigError

VERSION_ENV = "TBCLF_RUN_VERSION"
_VERSION_RE = re.compile(r"^version_(\d+)$")


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
            return candidate
        except FileExistsError:
            candidate += 1


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


class RunLogger(TensorBoardLogger):
    """TensorBoard logger whose new version folders are claimed atomically.

    The version is decided once in the launching process and handed to DDP workers through the
    environment, so all ranks write to the same folder.
    """

    def __init__(
        self, save_dir: str = "runs", name: str = "tbclf", version: int | None = None, **kwargs
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
