"""TBDataModule end to end on small synthetic data sets (and the dev set when present)."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from imaging import fake_nlm_download, make_dataset, make_png
from torch.utils.data import DataLoader

import tbclf.data.imageio as imageio
from tbclf.data.cache import DecodeCache
from tbclf.data.datamodule import TBDataModule
from tbclf.data.dataset import CachedImageDataset, seed_worker, to_float_batch
from tbclf.data.records import Record
from tbclf.data.splits import hash_files
from tbclf.data.transforms import build_transforms
from tbclf.errors import ConfigError, DataError

DEVSET = Path(__file__).parents[1].parent / "shared/data/tb-cxr-dev"
SIZE = 32


def module(tmp_path: Path, root: Path | None = None, **kwargs) -> TBDataModule:
    opts = dict(
        root=root if root is not None else tmp_path / "data",
        image_size=SIZE,
        batch_size=8,
        num_workers=0,
        cache_dir=tmp_path / "cache",
        val_fraction=0.2,
        test_fraction=0.2,
    )
    opts.update(kwargs)
    return TBDataModule(**opts)


@pytest.fixture
def data(tmp_path: Path) -> dict[str, int | None]:
    return make_dataset(tmp_path / "data", "mixed", n_per_class=5, size=40)


def check_batch(batch: dict, batch_size: int | None = None) -> None:
    assert set(batch) == {"image", "label", "id", "source", "view", "index"}
    image, label = batch["image"], batch["label"]
    n = image.shape[0]
    if batch_size is not None:
        assert n == batch_size
    assert image.shape == (n, 1, SIZE, SIZE) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert label.shape == (n,) and label.dtype == torch.float32
    assert isinstance(batch["id"], list) and len(batch["id"]) == n
    assert all(isinstance(x, str) for x in batch["id"] + batch["source"] + batch["view"])


def test_batches_follow_the_contract(tmp_path: Path, data) -> None:
    dm = module(tmp_path)
    dm.setup("fit")
    assert len(dm.records) == len(data) == 40
    assert sum(len(v) for v in dm.split.values()) == 40
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        check_batch(batch)
        for i, lab in zip(batch["id"], batch["label"].tolist(), strict=True):
            assert lab == data[i]
    assert not dm.train_dataloader().drop_last and not dm.val_dataloader().drop_last
    # Only a training tail of a single image (BatchNorm fails on it) is dropped.
    n_train = len(dm.split["train"])
    assert module(tmp_path, batch_size=n_train - 1).train_dataloader().drop_last
    assert not module(tmp_path, batch_size=n_train - 1).val_dataloader().drop_last
    assert dm.class_counts["train"][0] > 0 and dm.class_counts["train"][1] > 0


@pytest.mark.parametrize("preprocessing", ["clahe", "equalize", "none"])
def test_fast_path_equals_the_reference_pipeline(tmp_path: Path, data, preprocessing) -> None:
    """Cached contrast + uint8 workers + batch conversion == build_transforms on the original."""
    dm = module(tmp_path, preprocessing=preprocessing, clahe_clip_limit=3.0, clahe_tile_grid=4)
    dm.setup("fit")
    reference = build_transforms("val", preprocessing, clahe_clip_limit=3.0, clahe_tile_grid=4)
    by_id = {r.id: r for r in dm.records}
    for batch in dm.val_dataloader():
        for image, ident in zip(batch["image"], batch["id"], strict=True):
            original = imageio.load_prepared(by_id[ident].path, SIZE)
            assert torch.equal(image, reference(image=original)["image"])


def test_loader_converts_uint8_batches_exactly() -> None:
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(3, 1, 1, 1)
    batch = to_float_batch({"image": u8, "label": torch.zeros(3), "id": ["a", "b", "c"]})
    expected = A.ToFloat(max_value=255.0)(image=u8[0, 0].numpy())["image"]
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (3, 1, 16, 16)
    assert np.array_equal(batch["image"][2, 0].numpy(), expected)
    assert batch["id"] == ["a", "b", "c"]
    floats = {"image": torch.rand(2, 1, 4, 4)}
    assert to_float_batch(floats)["image"] is floats["image"]


def test_every_option_is_a_hyperparameter(tmp_path: Path) -> None:
    dm = TBDataModule(root=tmp_path, num_workers=0)
    expected = {
        "root", "layout", "preprocessing", "clahe_clip_limit", "clahe_tile_grid", "image_size",
        "resize", "crop_border", "batch_size", "num_workers", "seed", "val_fraction",
        "test_fraction", "num_folds", "fold", "split_file", "cache_dir", "predict_root",
        "download", "skip_bad_images", "hflip", "max_pixels", "keep_lateral", "keep_non_chest",
        "group_by",
        "near_duplicates", "test_sources", "train_sources",
    }  # fmt: skip
    assert set(dm.hparams) == expected


def test_originals_are_decoded_once(tmp_path: Path, data, monkeypatch) -> None:
    calls: list[Path] = []
    real = imageio.load_prepared
    monkeypatch.setattr(
        imageio, "load_prepared", lambda p, *a, **k: calls.append(Path(p)) or real(p, *a, **k)
    )
    dm = module(tmp_path)
    dm.setup("fit")
    assert len(calls) == 40
    for _ in range(2):
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            for _batch in loader:
                pass
    assert len(calls) == 40
    # A new run with the same settings uses the cache from the first.
    module(tmp_path).setup("fit")
    assert len(calls) == 40
    # Other settings, other entries.
    module(tmp_path, image_size=24).setup("fit")
    assert len(calls) == 80


def test_same_seed_same_split_and_order(tmp_path: Path, data) -> None:
    def run(seed: int) -> tuple[dict, list[str], torch.Tensor]:
        dm = module(tmp_path, seed=seed)
        dm.setup("fit")
        batch = next(iter(dm.train_dataloader()))
        return {k: [r.id for r in v] for k, v in dm.split.items()}, batch["id"], batch["image"]

    a, b, c = run(1), run(1), run(2)
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert a[0] != c[0]


def logged_trainer(tmp_path: Path) -> pl.Trainer:
    """A trainer with a logger, so it has a run folder (log_dir) for the split file."""
    return pl.Trainer(
        default_root_dir=tmp_path / "runs",
        logger=pl.loggers.CSVLogger(tmp_path / "runs"),
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_split_is_written_for_the_run_and_can_be_replayed(tmp_path: Path, data) -> None:
    trainer = logged_trainer(tmp_path)
    dm = module(tmp_path, seed=3)
    dm.trainer = trainer
    dm.setup("fit")
    split_json = Path(trainer.log_dir) / "split.json"
    assert dm.split_path == split_json and split_json.is_file()
    doc = json.loads(split_json.read_text())
    assert doc["seed"] == 3 and set(doc["splits"]) == {"train", "val", "test"}
    replay = module(tmp_path, seed=999, split_file=split_json)
    replay.setup("fit")
    assert {k: [r.path for r in v] for k, v in replay.split.items()} == {
        k: [r.path for r in v] for k, v in dm.split.items()
    }


def test_a_later_stage_writes_its_own_split_file(tmp_path: Path, data) -> None:
    """Lightning calls setup() with a TrainerFn; the file is named after its value."""
    from pytorch_lightning.trainer.states import TrainerFn

    trainer = logged_trainer(tmp_path)
    dm = module(tmp_path, seed=3)
    dm.trainer = trainer
    dm.setup(TrainerFn.TESTING)
    assert dm.split_path == Path(trainer.log_dir) / "split.test.json"
    assert sorted(p.name for p in Path(trainer.log_dir).glob("split*.json")) == ["split.test.json"]


def test_k_fold_options(tmp_path: Path, data) -> None:
    tests = []
    for fold in range(3):
        dm = module(tmp_path, num_folds=3, fold=fold)
        dm.setup("fit")
        tests.append({r.id for r in dm.split["test"]})
    assert set().union(*tests) == set(data) and sum(map(len, tests)) == len(data)
    with pytest.raises(ConfigError, match="data.fold"):
        module(tmp_path, num_folds=3, fold=3)


def test_a_held_out_source_is_the_whole_test_set(tmp_path: Path, data) -> None:
    everything = module(tmp_path)
    everything.setup("fit")
    sources = sorted({r.source for r in everything.records})
    assert len(sources) >= 2
    held = sources[0]
    dm = module(tmp_path, test_sources=[held])
    dm.setup("fit")
    assert {r.source for r in dm.split["test"]} == {held}
    assert len(dm.split["test"]) == sum(r.source == held for r in everything.records)
    assert all(r.source != held for name in ("train", "val") for r in dm.split[name])
    assert json.loads(dm.save_split(tmp_path / "s.json").read_text())["test_sources"] == [held]
    with pytest.raises(ConfigError, match="num_folds"):
        module(tmp_path, test_sources=[held], num_folds=3)
    with pytest.raises(ConfigError, match="test_sources"):
        module(tmp_path, train_sources=[held])
    with pytest.raises(ConfigError, match="nowhere"):
        module(tmp_path, test_sources=["nowhere"]).setup("fit")


def test_bad_images_fail_setup_or_are_skipped_once(tmp_path: Path, data) -> None:
    bad = tmp_path / "data" / "da" / "healthy" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="broken.png"):
        module(tmp_path).setup("fit")
    dm = module(tmp_path, skip_bad_images=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    ours = [w for w in caught if "unreadable" in str(w.message)]
    assert len(ours) == 1 and "1 unreadable" in str(ours[0].message)
    assert len(dm.records) == 40 and [r.path.name for r in dm.bad_records] == ["broken.png"]


def test_predict_keeps_ids_and_has_nan_labels(tmp_path: Path, data) -> None:
    pred = tmp_path / "to_predict"
    ids = ["scan_b", "scan_a", "scan_c"]
    for i, name in enumerate(ids):
        make_png(pred / f"{name}.png", (50, 30), seed=100 + i)
    dm = module(tmp_path, root=None, predict_root=pred)
    dm.setup("predict")
    got_ids, labels = [], []
    for batch in dm.predict_dataloader():
        # predict batches also say what became of each image (decoded in the loader)
        assert set(batch["status"]) == {"scored"} and set(batch["why"]) == {""}
        check_batch({k: v for k, v in batch.items() if k not in ("path", "status", "why")})
        got_ids += batch["id"]
        labels += batch["label"].tolist()
    assert sorted(got_ids) == sorted(ids)
    assert all(math.isnan(x) for x in labels)


def test_predict_from_zindi_csv(tmp_path: Path) -> None:
    expected = make_dataset(tmp_path / "z", "zindi", n_per_class=2, size=40, with_labels=False)
    dm = module(tmp_path, root=None, predict_root=tmp_path / "z" / "Train.csv")
    dm.setup("predict")
    ids = [i for b in dm.predict_dataloader() for i in b["id"]]
    assert sorted(ids) == sorted(expected)


def test_user_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root"):
        TBDataModule(root=None, cache_dir=tmp_path / "c", num_workers=0).setup("fit")
    with pytest.raises(DataError, match="does not exist"):
        module(tmp_path, root=tmp_path / "missing").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No labelled images"):
        module(tmp_path, root=tmp_path / "empty").setup("fit")
    with pytest.raises(DataError, match="data.predict_root"):
        module(tmp_path).setup("predict")
    with pytest.raises(ConfigError, match="data.preprocessing"):
        module(tmp_path, preprocessing="gamma")
    with pytest.raises(ConfigError, match="data.resize"):
        module(tmp_path, resize="crop")


def test_download_fills_an_empty_root(tmp_path: Path, monkeypatch) -> None:
    calls = fake_nlm_download(monkeypatch, n_per_class=4)
    root = tmp_path / "nlm"
    with pytest.raises(DataError, match="does not exist"):
        module(tmp_path, root=root).setup("fit")
    assert calls == []
    dm = module(tmp_path, root=root, download=True)
    dm.setup("fit")
    assert calls == [root] and len(dm.records) == 16
    module(tmp_path, root=root, download=True).setup("fit")  # images there: no download
    assert calls == [root]


def test_one_class_data_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(6):
        make_png(root / "healthy" / f"h{i}.png", (40, 40), seed=i)
    with pytest.raises(DataError, match="split"):
        module(tmp_path, root=root).setup("fit")


def test_workers_get_their_own_augmentation_stream(tmp_path: Path) -> None:
    """Forked workers copy the transform's RNG; seed_worker must make their streams differ."""
    path = tmp_path / "one.png"
    make_png(path, (40, 40), seed=1)
    records = [Record(f"copy{i}", path, 0, "s") for i in range(4)]
    hashes = hash_files(records)
    cache = DecodeCache(tmp_path / "cache", SIZE)
    cache.warm(records, hashes, num_workers=0)

    def first_two(worker_init) -> list[torch.Tensor]:
        ds = CachedImageDataset(records, hashes, cache, build_transforms("train", seed=0))
        loader = DataLoader(
            ds,
            batch_size=1,
            num_workers=2,
            worker_init_fn=worker_init,
            generator=torch.Generator().manual_seed(0),
        )
        return [b["image"] for b, _ in zip(loader, range(2), strict=False)]

    a, b = first_two(seed_worker)  # item 0 from worker 0, item 1 from worker 1
    assert not torch.equal(a, b)
    again = first_two(seed_worker)
    assert torch.equal(a, again[0]) and torch.equal(b, again[1])


@pytest.mark.devset
@pytest.mark.skipif(not DEVSET.is_dir(), reason=f"dev set not found at {DEVSET}")
def test_devset_setup(tmp_path: Path) -> None:
    dm = TBDataModule(root=DEVSET, image_size=64, batch_size=16, num_workers=2,
                      cache_dir=tmp_path / "cache")  # fmt: skip
    dm.setup("fit")
    assert len(dm.records) == 376
    pairs = sorted(tuple(sorted(r.path.name for r in g)) for g in dm.duplicates)
    assert pairs == [
        ("n1.png", "n28.png"),
        ("n2.png", "n30.png"),
        ("n31.png", "n5.png"),
        ("n32.png", "n6.png"),
    ]
    where = {r.path: k for k, v in dm.split.items() for r in v}
    assert all(len({where[r.path] for r in g}) == 1 for g in dm.duplicates)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert set(batch["source"]) <= {"shenzhen", "montgomery", "da", "db"}
    assert np.isfinite(batch["label"].numpy()).all()
