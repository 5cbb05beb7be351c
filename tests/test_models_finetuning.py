from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from models_fakes import FakeDataModule, tiny_trainer
from torch.nn.modules.batchnorm import _BatchNorm

from tbclf.errors import ConfigError
from tbclf.models import TimmClassifier
from tbclf.models.finetuning import BackboneFreezeUnfreeze


def backbone_state(model: TimmClassifier) -> dict[str, torch.Tensor]:
    """Weights and BN buffers of everything but the classifier."""
    return {
        k: v.detach().clone()
        for k, v in model.net.state_dict().items()
        if not k.startswith("classifier.")
    }


class Probe(pl.Callback):
    """Snapshots the model at the end of each training epoch (before schedulers step)."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.heads: list[torch.Tensor] = []
        self.groups: list[list[tuple[str, float, int]]] = []
        self.frozen_bn_training: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bns = [m for m in pl_module.net.modules() if isinstance(m, _BatchNorm)]
        self.frozen_bn_training += [m.training for m in bns if not m.weight.requires_grad]

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append(backbone_state(pl_module))
        self.heads.append(pl_module.net.classifier.weight.detach().clone())
        opt = trainer.optimizers[0]
        self.groups.append([(g.get("name"), g["lr"], len(g["params"])) for g in opt.param_groups])


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_frozen_backbone_and_bn_stats_then_unfreeze_at_lower_lr(tmp_path):
    pl.seed_everything(0)
    model = TimmClassifier(
        pretrained=False, freeze_epochs=2, backbone_lr_factor=0.1, lr=1e-2, scheduler="none"
    )
    assert isinstance(model.configure_callbacks()[0], BackboneFreezeUnfreeze)
    start, head0 = backbone_state(model), model.net.classifier.weight.detach().clone()
    probe = Probe()
    trainer = tiny_trainer(
        tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[probe]
    )
    trainer.fit(model, datamodule=FakeDataModule())

    # epochs 0 and 1 (a validation run in between): backbone weights AND BN stats untouched
    for epoch in (0, 1):
        assert changed(start, probe.states[epoch]) == set(), epoch
        assert probe.groups[epoch] == [("head", 1e-2, 2)]
    assert not torch.equal(head0, probe.heads[0])  # the head did train
    assert probe.frozen_bn_training and not any(probe.frozen_bn_training)

    # epoch 2: unfrozen, weights and running stats move, backbone group at lr * 0.1
    moved = changed(probe.states[1], probe.states[2])
    assert "conv_stem.weight" in moved and "blocks.6.0.conv_pwl.weight" in moved
    assert "bn1.running_mean" in moved and "bn2.running_var" in moved
    (head_name, head_lr, _), (bb_name, bb_lr, n_bb) = probe.groups[2]
    assert (head_name, bb_name) == ("head", "backbone")
    assert bb_lr == pytest.approx(head_lr * 0.1)
    assert n_bb == sum(1 for n, p in model.net.named_parameters() if not n.startswith("classifier"))


def test_unfreeze_from_keeps_early_blocks_frozen(tmp_path):
    pl.seed_everything(0)
    model = TimmClassifier(pretrained=False, freeze_epochs=1, unfreeze_from=5, scheduler="cosine")
    start = backbone_state(model)
    probe = Probe()
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1, callbacks=[probe]
    )
    trainer.fit(model, datamodule=FakeDataModule())
    assert changed(start, probe.states[0]) == set()
    moved = changed(start, probe.states[1])
    early = ("conv_stem.", "bn1.", "blocks.0.", "blocks.1.", "blocks.2.", "blocks.3.", "blocks.4.")
    assert not [k for k in moved if k.startswith(early)]
    assert any(k.startswith("blocks.5.") for k in moved) and "conv_head.weight" in moved
    assert "bn2.running_mean" in moved
    # the cosine scheduler knows the new group: both groups follow the same schedule
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert len(scheduler.base_lrs) == 2
    assert scheduler.base_lrs[1] == pytest.approx(scheduler.base_lrs[0] * 0.1)
    head_lr, bb_lr = probe.groups[1][0][1], probe.groups[1][1][1]
    assert bb_lr == pytest.approx(head_lr * 0.1)


def test_freeze_epochs_zero_trains_everything_from_the_start(tmp_path):
    pl.seed_everything(0)
    model = TimmClassifier(pretrained=False, freeze_epochs=0, scheduler="plateau")
    assert model.configure_callbacks() == []
    start = backbone_state(model)
    probe = Probe()
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[probe]
    )
    trainer.fit(model, datamodule=FakeDataModule())
    assert "conv_stem.weight" in changed(start, probe.states[0])
    names = [g[0] for g in probe.groups[0]]
    assert names == ["head", "backbone"]
    assert probe.groups[0][1][1] == pytest.approx(probe.groups[0][0][1] * 0.1)


def test_bad_freeze_options():
    with pytest.raises(ConfigError, match="unfreeze_from"):
        TimmClassifier(pretrained=False, unfreeze_from=7)
    with pytest.raises(ConfigError, match="blocks"):
        TimmClassifier(backbone="resnet18", pretrained=False, unfreeze_from=1)
    with pytest.raises(ConfigError, match="freeze_epochs"):
        TimmClassifier(pretrained=False, freeze_epochs=-1)


def test_resume_after_unfreeze_keeps_training_the_backbone(tmp_path):
    pl.seed_everything(0)
    dm = FakeDataModule()
    first = TimmClassifier(pretrained=False, freeze_epochs=1, scheduler="none")
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(first, datamodule=dm)
    ckpt = tmp_path / "after_unfreeze.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = TimmClassifier(pretrained=False, freeze_epochs=1, scheduler="none")
    probe = Probe()
    trainer = tiny_trainer(
        tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1, callbacks=[probe]
    )
    trainer.fit(resumed, datamodule=dm, ckpt_path=ckpt)
    before = backbone_state(first)
    assert "conv_stem.weight" in changed(before, probe.states[-1])
    assert [g[0] for g in probe.groups[-1]] == ["head", "backbone"]
    assert probe.groups[-1][1][1] == pytest.approx(1e-3 * 0.1)
    assert all(p.requires_grad for p in resumed.net.parameters())


def test_zero_head_starts_at_one_half_and_learns_on_the_frozen_backbone(tmp_path):
    pl.seed_everything(0)
    default = TimmClassifier(pretrained=False)
    assert default.net.classifier.weight.abs().max() > 0.5  # timm's +-1/sqrt(1) for one logit
    model = TimmClassifier(pretrained=False, head_init="zero", freeze_epochs=1)
    images = torch.rand(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), torch.zeros(4))
    start = backbone_state(model)
    probe = Probe()
    trainer = tiny_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[probe]
    )
    trainer.fit(model, datamodule=FakeDataModule())
    assert changed(start, probe.states[0]) == set()  # frozen epoch: only the head moved
    assert probe.heads[0].abs().max() > 0  # a zero head still gets gradients from the features
    assert model.hparams.head_init == "zero"  # recorded with the run


def test_bad_head_init_names_the_key():
    with pytest.raises(ConfigError, match="model.head_init.*'timm', 'zero'.*'xavier'"):
        TimmClassifier(pretrained=False, head_init="xavier")
