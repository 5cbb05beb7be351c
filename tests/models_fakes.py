"""Tiny in-memory data in the batch-dict contract, for model tests (not collected by pytest)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from tbclf.engine.scripting import quiet_trainer


class FakeImages(Dataset):
    """Random gray images; TB images get a bright square so a model can learn something."""

    def __init__(self, n: int, size: int = 32, seed: int = 0, labeled: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.tensor([i % 2 for i in range(n)], dtype=torch.float32)
        self.images = torch.rand(n, 1, size, size, generator=g) * 0.5
        q = size // 4
        self.images[self.labels == 1, :, q : 2 * q, q : 2 * q] += 0.5
        self.labeled = labeled
        self.seed = seed

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        label = self.labels[i] if self.labeled else torch.tensor(float("nan"))
        return {
            "image": self.images[i],
            "label": label,
            "id": f"img{self.seed}_{i:03d}",
            "source": "fake_a" if i % 3 else "fake_b",
        }


class FakeDataModule(pl.LightningDataModule):
    def __init__(self, size: int = 32, batch_size: int = 8, n_train: int = 32, n_eval: int = 24):
        super().__init__()
        self.size, self.batch_size = size, batch_size
        self.n_train, self.n_eval = n_train, n_eval

    def _loader(self, n: int, seed: int, shuffle: bool = False, labeled: bool = True):
        data = FakeImages(n, self.size, seed=seed, labeled=labeled)
        return DataLoader(data, batch_size=self.batch_size, shuffle=shuffle, num_workers=0)

    def train_dataloader(self):
        return self._loader(self.n_train, 0, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.n_eval, 1)

    def test_dataloader(self):
        return self._loader(self.n_eval, 2)

    def predict_dataloader(self):
        return self._loader(self.n_eval, 3, labeled=False)


def tiny_trainer(tmp_path, **kwargs) -> pl.Trainer:
    return quiet_trainer(**{"default_root_dir": tmp_path, "accelerator": "cpu", "max_epochs": 2,
                            **kwargs})  # fmt: skip
