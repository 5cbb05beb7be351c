"""RNG state saved with checkpoints and put back on resume; DDP padding removed in _gathered."""

from __future__ import annotations

import io
import random

import numpy as np
import torch

from tbclf.engine.rng_state import RNGStateCallback, capture, restore
from tbclf.models import SimpleCNNClassifier


class _DataModule:
    def __init__(self, seed: int) -> None:
        self.train_generator = torch.Generator().manual_seed(seed)


class _Trainer:
    def __init__(self, seed: int = 0) -> None:
        self.datamodule = _DataModule(seed)


def _draw(trainer: _Trainer) -> tuple:
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        [random.random() for _ in range(3)],
        torch.rand(3, generator=trainer.datamodule.train_generator).tolist(),
    )


def test_saved_state_survives_a_weights_only_checkpoint_and_restores_every_stream() -> None:
    trainer = _Trainer()
    callback = RNGStateCallback()
    callback.setup(trainer, None, "fit")
    _draw(trainer)
    state = callback.state_dict()
    expected = _draw(trainer)

    buffer = io.BytesIO()
    torch.save({"callbacks": {"RNGStateCallback": state}}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["callbacks"]["RNGStateCallback"]

    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    fresh = _Trainer(seed=99)  # a new process: another generator object and state
    resumed = RNGStateCallback()
    resumed.setup(fresh, None, "fit")
    resumed.load_state_dict(loaded)
    assert _draw(fresh) == expected


def test_state_for_another_world_size_is_not_applied() -> None:
    import pytest

    trainer = _Trainer()
    state = {"format": 1, "ranks": [capture(trainer), capture(trainer)]}
    callback = RNGStateCallback()
    callback.setup(trainer, None, "fit")
    with pytest.warns(RuntimeWarning, match="2 process"):
        callback.load_state_dict(state)
    restore(state["ranks"][0], trainer)  # the state itself is valid


def test_gathered_outputs_keep_each_image_once_in_data_set_order() -> None:
    model = SimpleCNNClassifier(channels=[4], kernel_sizes=[3], head=[4], image_size=16)

    # Two ranks' worth of batches as DistributedSampler deals 5 images: rank 0 gets 0, 2, 4
    # and rank 1 gets 1, 3 plus the padding repeat of image 0.
    def part(indices: list[int]) -> dict:
        return {
            "id": [f"img{i}" for i in indices],
            "source": ["s"] * len(indices),
            "logit": np.array([i / 10 for i in indices], dtype=np.float32),
            "label": np.array([i % 2 for i in indices], dtype=np.float32),
            "index": np.array(indices),
        }

    model._collected["val"] = [part([0, 2]), part([4]), part([1, 3]), part([0])]
    out = model._gathered("val")
    assert out["id"].tolist() == [f"img{i}" for i in range(5)]
    np.testing.assert_array_equal(out["logit"], np.arange(5, dtype=np.float32) / 10)
    np.testing.assert_array_equal(out["label"], [0, 1, 0, 1, 0])
    assert model._collected["val"] == []

    # Loaders without an index: kept as they came.
    plain = part([2, 2])
    del plain["index"]
    model._collected["val"] = [{**plain, "index": None}]
    assert model._gathered("val")["id"].tolist() == ["img2", "img2"]
