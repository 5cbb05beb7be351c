"""TBDataModule: from a folder of X-rays to leakage-free, cached, augmented batches.

setup() does all the slow and failure-prone work up front (discover, hash, decode every image
once into the cache, split), so a bad file or a one-class split stops the run before training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from tbclf.data import layouts
from tbclf.data.cache import DecodeCache
from tbclf.data.dataset import CachedImageDataset, TBDataLoader, build_loader, rank_seed
from tbclf.data.grouping import group_keys
from tbclf.data.imageio import DEFAULT_MAX_PIXELS, RESIZE_MODES
from tbclf.data.neardup import find_near_duplicates
from tbclf.data.pixel_defaults import PIXEL_DEFAULTS
from tbclf.data.predict_set import PredictDataset
from tbclf.data.records import Record
from tbclf.data.spec import InputSpec
from tbclf.data.splits import (
    SPLIT_NAMES,
    Split,
    class_counts,
    describe_duplicates,
    find_duplicates,
    hash_files,
    link_groups,
    linked_groups,
    load_split,
    make_fold_split,
    make_source_split,
    make_split,
    relative_path,
    save_split,
)
from tbclf.data.transforms import build_transforms
from tbclf.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class TBDataModule(pl.LightningDataModule):
    """Healthy (0) vs TB (1) chest X-rays; every dataloader yields the batch dict contract:
    {"image": float32 (B,1,S,S) in [0,1], "label": float32 (B,) NaN if unlabeled,
    "id": list[str], "source": list[str], "view": list[str],
    "index": int64 (B,) position in its data set}; predict batches add "path", "status"
    ("scored", "unreadable" or "left out") and "why" per image."""

    def __init__(
        self,
        root: str | Path | None = None,
        layout: str = "auto",
        preprocessing: str = PIXEL_DEFAULTS.preprocessing,
        clahe_clip_limit: float = PIXEL_DEFAULTS.clahe_clip_limit,
        clahe_tile_grid: int = PIXEL_DEFAULTS.clahe_tile_grid,
        image_size: int = PIXEL_DEFAULTS.image_size,
        resize: str = PIXEL_DEFAULTS.resize,
        crop_border: bool = PIXEL_DEFAULTS.crop_border,
        batch_size: int = 32,
        num_workers: int = 2,
        seed: int = 42,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        num_folds: int | None = None,
        fold: int = 0,
        split_file: str | Path | None = None,
        test_sources: list[str] | None = None,
        train_sources: list[str] | None = None,
        cache_dir: str | Path = ".cache/tbclf",
        predict_root: str | Path | None = None,
        download: bool = False,
        skip_bad_images: bool = False,
        hflip: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        keep_lateral: bool = False,
        keep_non_chest: bool = False,
        group_by: str | None = None,
        near_duplicates: bool = True,
    ) -> None:
        """
        Args:
            root: Folder with the labelled images (NLM names, class folders or a Zindi CSV).
            layout: "auto", "nlm", "zindi", "folders" (healthy vs TB), or "classes": every
                folder under root is a class (any number; e.g. pretraining data).
            preprocessing: Contrast step at every stage: "clahe", "equalize" or "none".
            clahe_clip_limit: CLAHE clip limit (>= 1).
            clahe_tile_grid: CLAHE tiles per side.
            image_size: Side of the square model input in pixels.
            resize: "pad" keeps the aspect ratio with black bars, "squash" stretches.
            crop_border: Remove near-black bands along the image edges before resizing.
            batch_size: Images per batch.
            num_workers: DataLoader worker processes (also used to warm the cache).
            seed: Fixes the split and the training order/augmentation.
            val_fraction: Share of the data for validation (threshold and checkpoint choice).
            test_fraction: Share of the data held out for the final test.
            num_folds: Use k-fold splitting instead of fractions (test = fold `fold`).
            fold: Which fold is the test set when num_folds is set.
            split_file: JSON split (from a previous run's split.json) to reuse exactly.
            test_sources: Hold out whole image sources (sites, e.g. ["montgomery"]) as the
                test set: how the model does on a site it never saw.
            train_sources: With test_sources, train and validate on these sources only
                (default: all the others).
            cache_dir: Where decoded, resized images are cached.
            predict_root: Folder, image, Zindi CSV or list of paths (a .txt file with one path
                a line, or a CSV with a "path" column) to predict on.
            download: Download the public NLM sets into root when it has no images.
            skip_bad_images: Drop unreadable images with one warning instead of failing.
            hflip: Random horizontal flips in training (off: it moves the heart to the right).
            max_pixels: Refuse images with more pixels (decompression-bomb guard).
            keep_lateral: Keep lateral DICOM views (ViewPosition LL/RL/LATERAL), which are
                skipped with a warning by default (models are trained on frontal views).
            keep_non_chest: Predict also on DICOMs whose Modality is not radiography (CT, MR,
                US, NM, PT, ...) or whose BodyPartExamined names another body part; they are
                left out with a warning by default.
            group_by: Keep groups of images in one split: "patient" (DICOM PatientID, hashed),
                "column:NAME" (a column of the Zindi CSV), "regex:PATTERN" (first capture
                group of a regex on the root-relative path). Default: per image.
            near_duplicates: Group the same X-ray saved at another size, format or contrast
                (perceptual hash + correlation on the cached image), like byte-identical copies.
        """
        super().__init__()
        self.save_hyperparameters()
        if resize not in RESIZE_MODES:
            raise ConfigError(f"data.resize={resize!r} is not one of {RESIZE_MODES}.")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1.")
        if int(num_workers) < 0:
            raise ConfigError(f"data.num_workers={num_workers} must be >= 0.")
        if num_folds is not None and (int(num_folds) < 2 or not 0 <= int(fold) < int(num_folds)):
            raise ConfigError(
                f"data.num_folds={num_folds} / data.fold={fold}: need num_folds >= 2 and "
                "0 <= fold < num_folds."
            )
        self.root = Path(root).expanduser() if root is not None else None
        self.layout = layout
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.num_folds = None if num_folds is None else int(num_folds)
        self.fold = int(fold)
        self.split_file = Path(split_file) if split_file is not None else None
        self.test_sources = list(test_sources) if test_sources else None
        self.train_sources = list(train_sources) if train_sources else None
        if self.train_sources and not self.test_sources:
            raise ConfigError("data.train_sources needs data.test_sources (the held-out site).")
        if self.test_sources and num_folds is not None:
            raise ConfigError(
                "data.test_sources and data.num_folds both choose the test set: set one."
            )
        self.cache_dir = Path(cache_dir).expanduser()
        self.predict_root = Path(predict_root).expanduser() if predict_root is not None else None
        self.download = download
        self.skip_bad_images = skip_bad_images
        self.hflip = hflip
        self.max_pixels = int(max_pixels)
        self.keep_lateral = bool(keep_lateral)
        self.keep_non_chest = bool(keep_non_chest)
        self.group_by = group_by
        self.near_duplicates = bool(near_duplicates)
        # The pixel settings as one InputSpec; a new model trained on this data takes it over,
        # and a trained model hands its own back (see setup()).
        self.use_input_spec(
            InputSpec(
                image_size=image_size,
                resize=resize,
                crop_border=crop_border,
                preprocessing=preprocessing,
                clahe_clip_limit=clahe_clip_limit,
                clahe_tile_grid=clahe_tile_grid,
            )
        )

        self.records: list[Record] = []
        self.split: Split = {}
        self.duplicates: list[list[Record]] = []
        self.near_duplicate_groups: list[list[Record]] = []
        self.groups: dict[Path, str] = {}
        self.bad_records: list[Record] = []
        self.hashes: dict[Path, str] = {}
        self.predict_records: list[Record] = []
        self.split_path: Path | None = None
        self._datasets: dict[str, CachedImageDataset | PredictDataset] = {}
        self._train_generator: torch.Generator | None = None

    # ------------------------------------------------------------------ spec

    def use_input_spec(self, spec: InputSpec) -> None:
        """Prepare images as `spec` says: the cache and the per-stage pipelines follow it."""
        self.input_spec = spec
        self.image_size = spec.image_size
        # The deterministic contrast step is cached with the image, so the per-item pipeline is
        # only augmentation; it ships uint8 and TBDataLoader converts batches to float32.
        self.transforms = {
            stage: build_transforms(
                stage,
                spec.preprocessing,
                hflip=self.hflip,
                seed=self.seed,
                contrast=False,
                to_float=False,
            )  # fmt: skip
            for stage in ("train", "val", "test", "predict")
        }
        self.cache = DecodeCache.for_spec(self.cache_dir, spec, self.max_pixels)
        self._datasets = {}
        self.split = {}

    def _adopt_model_spec(self) -> None:
        """A model with a spec of its own (a checkpoint's: a resumed fit, validate, test,
        predict) gets its images prepared as it was trained, whatever today's data.* settings
        say; a new model takes this module's spec instead, in its own setup."""
        trainer = self.trainer
        model = getattr(trainer, "lightning_module", None) if trainer is not None else None
        spec = getattr(model, "own_input_spec", getattr(model, "input_spec", None))
        if not isinstance(spec, InputSpec):
            return
        changed = spec.differences(self.input_spec.pixel_options())
        if changed:
            log.info(
                "preparing images as the model was trained: %s",
                ", ".join(f"{k}={ours!r} (data.{k} was {theirs!r})"
                          for k, (theirs, ours) in changed.items()),
            )  # fmt: skip
            self.use_input_spec(InputSpec.from_options(spec.pixel_options()))
            # The options used, where checkpoints and hparams.yaml read them.
            self.save_hyperparameters({**self.hparams, **spec.pixel_options()})

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str | None = None) -> None:
        # Lightning passes a TrainerFn, a str enum that formats as "TrainerFn.TESTING".
        stage = str(getattr(stage, "value", stage or "fit"))
        self._adopt_model_spec()
        if stage == "predict":
            self._setup_predict()
            return
        if not self.split:
            self._setup_labeled()
        self._write_split_for_run(stage)

    def prepare_data(self) -> None:
        """Download the public NLM sets into an empty data.root (data.download=true).

        Lightning calls this in one process per machine before any setup(), so DDP ranks never
        fetch the same archive side by side.
        """
        if not self.download or self.root is None:
            return
        try:
            layouts.discover(self.root, self.layout)
            return  # images are there already
        except DataError:
            pass
        from tbclf.data.download import ensure_nlm_data

        ensure_nlm_data(self.root)

    def _discover(self) -> list[Record]:
        if self.root is None:
            raise DataError(
                "data.root is not set: point it at the folder with the chest X-rays "
                "(NLM names, class folders or a Zindi CSV)."
            )
        try:
            return layouts.discover(self.root, self.layout, self.keep_lateral)
        except DataError as exc:
            if not self.download or self.trainer is not None:
                # Under a Trainer, prepare_data() has already downloaded what it could.
                if "data.root" in str(exc):
                    raise
                raise DataError(f"data.root={self.root}: {exc}") from None
        # Used without a Trainer (nobody called prepare_data): fetch the NLM sets now.
        self.prepare_data()
        return layouts.discover(self.root, self.layout, self.keep_lateral)

    def _hash(self, records: list[Record]) -> dict[Path, str]:
        return hash_files(records, memo_file=self.cache_dir / "file-hashes.json")

    def _setup_labeled(self) -> None:
        records = self._discover()
        hashes = self._hash(records)
        self.duplicates = find_duplicates(records, hashes)
        if self.duplicates:
            log.warning(
                "%d group(s) of byte-identical images; each group is kept in one split: %s",
                len(self.duplicates),
                describe_duplicates(self.duplicates),
            )
        kept = self.cache.warm(records, hashes, self.num_workers, self.skip_bad_images)
        kept_paths = {Path(r.path) for r in kept}
        self.bad_records = [r for r in records if Path(r.path) not in kept_paths]
        if self.split_file is not None:
            split = load_split(self.split_file, records, self.root)
            split = {k: [r for r in v if Path(r.path) in kept_paths] for k, v in split.items()}
        elif self.test_sources:
            split = make_source_split(
                kept, hashes, self.seed, self.test_sources, self.train_sources,
                self.val_fraction, groups=self._link(kept, hashes),
            )  # fmt: skip
        elif self.num_folds is not None:
            split = make_fold_split(
                kept, hashes, self.seed, self.num_folds, self.fold, self.val_fraction,
                groups=self._link(kept, hashes),
            )  # fmt: skip
        else:
            split = make_split(
                kept, hashes, self.seed, self.val_fraction, self.test_fraction,
                groups=self._link(kept, hashes),
            )  # fmt: skip
        self.records, self.hashes, self.split = kept, hashes, split
        self.duplicates = [g for g in self.duplicates if all(Path(r.path) in kept_paths for r in g)]
        log.info(
            "Data: %d images; %s",
            len(kept),
            ", ".join(f"{k}={len(v)} {class_counts(v)}" for k, v in split.items()),
        )
        for name in SPLIT_NAMES:
            self._datasets[name] = CachedImageDataset(
                split[name], hashes, self.cache, self.transforms[name]
            )

    def _link(self, records: list[Record], hashes: dict[Path, str]) -> dict[Path, str] | None:
        """Group keys for the split: data.group_by and near-duplicates joined to the
        byte-identical groups (None when neither applies: the split is per content hash)."""
        links = []
        if self.group_by:
            links.append(group_keys(records, self.group_by, self.root))
        if self.near_duplicates:
            plain = self.cache.plain()
            near = find_near_duplicates(
                records, lambda r: plain.get(r, hashes[Path(r.path)]), hashes
            )
            self.near_duplicate_groups = near
            if near:
                log.warning(
                    "%d group(s) of near-duplicate images (one X-ray at another size, format "
                    "or contrast); each group is kept in one split: %s",
                    len(near),
                    describe_duplicates(near),
                )
                mixed = [g for g in near if len({r.label for r in g}) > 1]
                if mixed:
                    log.warning(
                        "%d near-duplicate group(s) carry different labels; check them: %s",
                        len(mixed),
                        describe_duplicates(mixed),
                    )
            links.append({Path(r.path): f"near:{i}" for i, g in enumerate(near) for r in g})
        if not links:
            return None
        self.groups = link_groups(records, hashes, *links)
        return self.groups

    def _setup_predict(self) -> None:
        if self.predict_root is None:
            raise DataError(
                "data.predict_root is not set: point it at a folder of images, one image or a "
                "Zindi CSV (ID column) to predict on."
            )
        if not self.predict_root.exists():
            raise DataError(
                f"data.predict_root={self.predict_root} does not exist: point it at a folder of "
                "images, one image or a Zindi CSV (ID column) to predict on."
            )
        # DICOM headers are read by the loader's workers, image by image: an archive's list is
        # ready at once, and what is not a frontal chest radiograph is left out there.
        records = layouts.discover_predict(self.predict_root, read_headers=False)
        self.predict_records = records
        self._datasets["predict"] = PredictDataset(
            records, self.input_spec, self.max_pixels, None, self.keep_lateral,
            self.keep_non_chest,
        )  # fmt: skip

    def exclude_predicted(self, ids: set[str]) -> None:
        """Leave out the images an earlier, interrupted predict already wrote (a resume)."""
        dataset = self._dataset("predict")
        assert isinstance(dataset, PredictDataset)
        self._datasets["predict"] = dataset.without(ids)

    def split_meta(self) -> dict[str, Any]:
        root = self.root if self.root is not None else Path.cwd()
        return {
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "num_folds": self.num_folds,
            "fold": self.fold,
            "test_sources": self.test_sources,
            "train_sources": self.train_sources,
            "layout": self.layout,
            "split_file": str(self.split_file) if self.split_file else None,
            "duplicates": [[relative_path(r.path, root) for r in g] for g in self.duplicates],
            "near_duplicates": [
                [relative_path(r.path, root) for r in g] for g in self.near_duplicate_groups
            ],
            # The grouping as lists of paths only: group keys (hashed patient IDs) never leave.
            "group_by": self.group_by,
            "groups": [
                [relative_path(r.path, root) for r in g]
                for g in linked_groups(self.records, self.groups)
                if len({self.hashes.get(Path(r.path)) for r in g}) > 1
            ]
            if self.groups
            else [],
            "skipped_bad_images": [relative_path(r.path, root) for r in self.bad_records],
        }

    def save_split(self, path: Path) -> Path:
        """Write the split in use, so a run can be repeated exactly (data.split_file)."""
        if not self.split:
            raise RuntimeError("call setup() before save_split()")
        save_split(Path(path), self.split, self.root, self.split_meta())
        return Path(path)

    def _write_split_for_run(self, stage: str) -> None:
        trainer = self.trainer
        if trainer is None or trainer.logger is None:
            return  # without a logger, log_dir is the working directory: not a run folder
        # trainer.log_dir broadcasts under DDP: every rank must ask, or the ranks' later
        # broadcasts pair up wrongly.
        log_dir = trainer.log_dir
        if not log_dir or not trainer.is_global_zero:
            return
        # split.json records the training run's split; a later validate/test in the same
        # run folder writes its own file instead of replacing it.
        name = "split.json" if stage == "fit" else f"split.{stage}.json"
        self.split_path = self.save_split(Path(log_dir) / name)

    # ------------------------------------------------------------------ loaders

    def _dataset(self, name: str) -> CachedImageDataset | PredictDataset:
        if name not in self._datasets:
            if name == "predict":
                self._setup_predict()
            else:
                self.setup("fit")
        return self._datasets[name]

    @property
    def train_generator(self) -> torch.Generator:
        """The training loader's RNG (shuffle order, augmentation seeds): its own stream per
        DDP rank, saved in checkpoints by :mod:`tbclf.engine.rng_state` for an exact resume."""
        if self._train_generator is None:
            rank = int(getattr(self.trainer, "global_rank", 0) or 0)
            self._train_generator = torch.Generator().manual_seed(rank_seed(self.seed, rank))
        return self._train_generator

    def _loader(self, name: str, shuffle: bool) -> TBDataLoader:
        dataset = self._dataset(name)
        if not shuffle:
            # A generator of its own: creating an evaluation loader's iterator then never draws
            # from the global torch RNG, so training's streams (dropout) do not depend on when
            # or how often validation loaders start (persistent workers, a resumed run).
            generator = torch.Generator().manual_seed(self.seed)
            return build_loader(dataset, self.batch_size, self.num_workers, False, generator)
        return build_loader(
            dataset,
            self.batch_size,
            self.num_workers,
            True,
            self.train_generator,
            persistent_workers=False,  # fresh workers seeded from the generator each epoch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        if not self._dataset("test").records:
            raise DataError(
                "The test split is empty (data.test_fraction=0 and no folds); set "
                "data.test_fraction > 0 or data.num_folds to test."
            )
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Decoding in the loader's workers; under DDP each rank takes its share with
        DistributedSampler, whose padding repeats the writer drops by image ID (every rank
        gets the same number of batches, so none waits for another at the end)."""
        dataset = self._dataset("predict")
        trainer = self.trainer
        world = int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1
        sampler = None
        if world > 1:
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=int(trainer.global_rank), shuffle=False
            )
        generator = torch.Generator().manual_seed(self.seed)
        return build_loader(
            dataset, self.batch_size, self.num_workers, False, generator, sampler=sampler
        )

    @property
    def class_counts(self) -> dict[str, dict[int | None, int]]:
        return {name: class_counts(records) for name, records in self.split.items()}
