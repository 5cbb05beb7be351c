"""The one loader: a checkpoint gives back its model, threshold and input spec, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from models_fakes import FakeDataModule, tiny_trainer

from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError
from tbclf.models import SimpleCNNClassifier, TBClassifier
from tbclf.models.loading import load_classifier, read_checkpoint

SPEC = {"image_size": 32, "preprocessing": "equalize", "resize": "squash", "crop_border": False}


def _small(**kwargs) -> SimpleCNNClassifier:
    opts = dict(channels=[4], kernel_sizes=[3], head=[4], image_size=32, channels_last=False)
    opts.update(kwargs)
    return SimpleCNNClassifier(**opts)


def _save(tmp_path: Path, model: SimpleCNNClassifier, name: str = "m.ckpt", **extra) -> Path:
    hparams = {**model.hparams, "_class_path": "tbclf.models.SimpleCNNClassifier"}
    path = tmp_path / name
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, **extra}, path)
    return path


def test_trained_checkpoint_loads_with_threshold_and_spec(tmp_path: Path) -> None:
    model = _small(input_spec=SPEC)
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=FakeDataModule(size=32))
    ckpt = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = TBClassifier.load(str(ckpt))
    assert isinstance(loaded, SimpleCNNClassifier) and not loaded.training
    assert float(loaded.threshold) == pytest.approx(float(model.threshold))
    assert loaded.input_spec == model.input_spec
    assert loaded.input_spec.image_size == 32 and loaded.input_spec.preprocessing == "equalize"
    assert loaded.input_spec.mean == (0.5,) and loaded.input_spec.in_chans == 1
    x = torch.rand(2, 1, 32, 32)
    model.eval()
    assert torch.allclose(loaded(x), model(x))


def test_older_checkpoint_takes_the_spec_from_its_data_settings(tmp_path: Path) -> None:
    model = _small()
    hparams = dict(model.hparams)
    hparams.pop("input_spec")
    path = tmp_path / "old.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": {**hparams, "_class_path": "tbclf.models.SimpleCNNClassifier"},
            "datamodule_hyper_parameters": {"image_size": 32, "preprocessing": "none", "seed": 1},
        },
        path,
    )
    spec = load_classifier(path).input_spec
    assert (spec.image_size, spec.preprocessing) == (32, "none")


class _Marker:
    """Unpickling this would create the marker file (what a crafted checkpoint does)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _save(tmp_path, _small(), "evil.ckpt", payload=_Marker(marker))
    with pytest.raises(ConfigError, match="cannot be loaded safely"):
        load_classifier(path)
    with pytest.raises(ConfigError, match="evil.ckpt"):
        read_checkpoint(path)
    assert not marker.exists(), "loading a checkpoint must never run its code"


@pytest.mark.parametrize(
    "class_path", ["os.system", "torch.nn.Linear", "tbclf.lightning_cli.TBCLI"]
)
def test_only_tbclf_classifiers_are_built(tmp_path: Path, class_path: str) -> None:
    model = _small()
    path = tmp_path / "other.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": {"_class_path": class_path}}, path
    )
    with pytest.raises(ConfigError, match="not a tbclf classifier"):
        load_classifier(path)


def test_missing_or_garbage_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_classifier(tmp_path / "nope.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.ckpt"):
        load_classifier(junk)


def test_fit_records_the_data_modules_spec(tmp_path: Path) -> None:
    model = _small()
    dm = FakeDataModule(size=32)
    dm.input_spec = InputSpec(image_size=32, preprocessing="none")
    tiny_trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)
    assert model.input_spec.preprocessing == "none"
    assert model.hparams["input_spec"]["preprocessing"] == "none"


def test_a_fixed_size_cnn_refuses_another_image_size() -> None:
    with pytest.raises(ConfigError, match="adaptive_pool"):
        _small().set_input_spec(InputSpec(image_size=64))


def test_a_spec_the_model_has_is_never_replaced_by_the_datas(tmp_path: Path) -> None:
    model = _small(input_spec=SPEC)
    dm = FakeDataModule(size=32)
    dm.input_spec = InputSpec(image_size=32, preprocessing="none")
    tiny_trainer(tmp_path, max_epochs=1).fit(model, datamodule=dm)
    assert model.input_spec.preprocessing == "equalize"
    assert model.hparams["input_spec"]["preprocessing"] == "equalize"


def test_a_new_plain_flatten_cnn_is_sized_for_its_data(tmp_path: Path) -> None:
    model = _small(image_size=None)
    assert model.own_input_spec is None
    dm = FakeDataModule(size=48)
    dm.input_spec = InputSpec(image_size=48)
    trainer = tiny_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert model.image_size == model.input_spec.image_size == model.hparams["image_size"] == 48
    assert model.hparams_initial["input_spec"]["image_size"] == 48, "hparams.yaml records it"
    ckpt = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = TBClassifier.load(str(ckpt))
    x = torch.rand(2, 1, 48, 48)
    model.eval()
    assert torch.allclose(loaded(x), model(x))
