"""InputSpec: the one test-time pipeline, equal to what the data module feeds a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from imaging import make_dataset, make_png

from tbclf.data.datamodule import TBDataModule
from tbclf.data.imageio import read_gray
from tbclf.data.spec import PIXEL_FIELDS, InputSpec
from tbclf.errors import ConfigError


@pytest.mark.parametrize("preprocessing", ["clahe", "equalize", "none"])
def test_prepare_equals_the_data_modules_test_batches(tmp_path: Path, preprocessing: str) -> None:
    make_dataset(tmp_path / "data", "folders", n_per_class=4, size=50)
    dm = TBDataModule(
        root=tmp_path / "data",
        image_size=32,
        preprocessing=preprocessing,
        clahe_clip_limit=3.0,
        batch_size=4,
        num_workers=0,
        cache_dir=tmp_path / "cache",
        val_fraction=0.25,
        test_fraction=0.25,
    )
    dm.setup("test")
    spec = dm.input_spec
    records = {r.id: r for r in dm.split["test"]}
    seen = 0
    for batch in dm.test_dataloader():
        for ident, image in zip(batch["id"], batch["image"], strict=True):
            expected = spec.prepare(records[ident].path)
            assert expected.dtype == torch.float32 and expected.shape == (1, 32, 32)
            assert torch.equal(image, expected), "spec.prepare must be bit-identical"
            seen += 1
    assert seen == len(records) > 0


def test_prepare_gray_equals_prepare_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    make_png(path, (70, 40), seed=3)
    spec = InputSpec(image_size=24, preprocessing="clahe")
    assert torch.equal(spec.prepare_gray(read_gray(path)), spec.prepare(path))


def test_round_trip_and_refusals() -> None:
    spec = InputSpec(image_size=64, resize="squash", preprocessing="equalize").with_network(
        3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    )
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert set(spec.pixel_options()) == set(PIXEL_FIELDS)
    with pytest.raises(ConfigError, match="imagesize"):
        InputSpec.from_dict({"imagesize": 64})
    with pytest.raises(ConfigError, match="data.resize"):
        InputSpec(resize="crop")
    with pytest.raises(ConfigError, match="data.preprocessing"):
        InputSpec(preprocessing="gamma")
    assert spec.differences({"image_size": 64, "resize": "pad", "seed": 1}) == {
        "resize": ("pad", "squash")
    }
    assert np.isclose(spec.mean[0], 0.485)


def test_pixel_defaults_have_one_home() -> None:
    """Training's spec, the data module, eda's options and the transforms default alike."""
    import inspect

    from tbclf.commands.common import DATA_OPTIONS
    from tbclf.data.pixel_defaults import PIXEL_DEFAULTS
    from tbclf.data.transforms import build_transforms

    spec = InputSpec()
    module = inspect.signature(TBDataModule).parameters
    transforms = inspect.signature(build_transforms).parameters
    for name, value in PIXEL_DEFAULTS._asdict().items():
        assert getattr(spec, name) == value and module[name].default == value, name
        if name in transforms:
            assert transforms[name].default == value, name
        if name in DATA_OPTIONS and name != "image_size":  # eda's statistics use 256 px
            assert DATA_OPTIONS[name][1] == value, name
