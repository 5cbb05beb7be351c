"""Random streams in checkpoints, so `fit --ckpt_path last` continues exactly where it stopped.

Lightning's checkpoint holds weights, optimizer, scheduler and loop counters but none of the
random streams the next epoch draws from: the global torch RNG (dropout, the evaluation loaders'
seeds), the training loader's generator (shuffle order and, through it, every augmentation
seed: see :class:`tbclf.data.dataset.TBDataLoader`) and numpy's and Python's global RNGs.
Without them a resumed run trains on other batches with other augmentations than a run that was
never stopped. The state is kept per DDP rank, since each rank draws its own streams.

Everything is stored as tensors and plain values, so checkpoints still load weights-only.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback

FORMAT = 1


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
    )


def _python_state() -> dict[str, Any]:
    version, internal, gauss_next = random.getstate()
    return {"version": int(version), "internal": list(internal), "gauss_next": gauss_next}


def _set_python_state(state: dict[str, Any]) -> None:
    random.setstate((state["version"], tuple(state["internal"]), state["gauss_next"]))


def _train_generator(trainer: pl.Trainer | None) -> torch.Generator | None:
    datamodule = getattr(trainer, "datamodule", None)
    generator = getattr(datamodule, "train_generator", None)
    return generator if isinstance(generator, torch.Generator) else None


def capture(trainer: pl.Trainer | None) -> dict[str, Any]:
    """This process's random streams (and the training loader's generator, if any)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": _python_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    generator = _train_generator(trainer)
    if generator is not None:
        state["train_generator"] = generator.get_state()
    return state


def restore(state: dict[str, Any], trainer: pl.Trainer | None) -> None:
    """Put back what :func:`capture` saved."""
    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    _set_python_state(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator = _train_generator(trainer)
    if generator is not None and "train_generator" in state:
        generator.set_state(state["train_generator"])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class RNGStateCallback(Callback):
    """Saves every rank's random streams with each checkpoint and restores them on resume.

    Lightning builds the checkpoint on every rank (rank 0 writes it), so ``state_dict`` gathers
    the ranks' states; ``load_state_dict`` runs on every rank, before the first resumed epoch's
    loader is created, and each rank takes its own. A checkpoint from a run with another number
    of processes cannot continue those streams: the run goes on with fresh ones and a warning.
    """

    def __init__(self) -> None:
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        local = capture(self._trainer)
        if _distributed():
            ranks: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, local)
        else:
            ranks = [local]
        return {"format": FORMAT, "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks") or []
        world = dist.get_world_size() if _distributed() else 1
        rank = dist.get_rank() if _distributed() else 0
        if state_dict.get("format") != FORMAT or len(ranks) != world:
            warnings.warn(
                f"the checkpoint's random state is for {len(ranks)} process(es), this run has "
                f"{world}: resuming with fresh random streams (the run is not bit-exact).",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        restore(ranks[rank], self._trainer)
