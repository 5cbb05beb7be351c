"""Train the new head on a frozen pretrained backbone first, then fine-tune the backbone.

Frozen means frozen: besides weights, batch-norm statistics stay as pretrained. Lightning's
``BaseFinetuning.freeze_module`` only sets ``track_running_stats=False``, which makes a BN layer
in train mode normalise with the batch's statistics (a different function than the pretrained
one, and noisy with small batches). Here frozen BN layers keep ``track_running_stats`` and are
held in eval mode for every training batch, so they use and keep their running statistics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer
from torch.optim.lr_scheduler import ReduceLROnPlateau

from tbclf.errors import ConfigError

log = logging.getLogger(__name__)

BACKBONE_GROUP = "backbone"


class BackboneFreezeUnfreeze(BaseFinetuning):
    """Freeze the backbone for ``freeze_epochs`` epochs, then add it to the optimizer.

    The LightningModule provides ``backbone_parts() -> (fixed, tunable)``: ``fixed`` modules stay
    frozen for the whole run (blocks before ``unfreeze_from``), ``tunable`` ones are unfrozen at
    epoch ``freeze_epochs`` as a new param group named "backbone" with
    ``lr = current head lr * backbone_lr_factor``. Everything else (the head) always trains.
    With ``freeze_epochs=0`` only ``fixed`` is frozen and the module's optimizer is expected to
    hold the tunable parameters from the start.
    """

    def __init__(self, freeze_epochs: int = 5, backbone_lr_factor: float = 0.1) -> None:
        super().__init__()
        if freeze_epochs < 0:
            raise ConfigError(f"model.freeze_epochs must be >= 0, got {freeze_epochs}")
        if backbone_lr_factor <= 0:
            raise ConfigError(f"model.backbone_lr_factor must be > 0, got {backbone_lr_factor}")
        self.freeze_epochs = int(freeze_epochs)
        self.backbone_lr_factor = float(backbone_lr_factor)
        self._frozen_bn: list[_BatchNorm] = []
        self._unfrozen = False

    @staticmethod
    def _parts(pl_module: pl.LightningModule) -> tuple[list[nn.Module], list[nn.Module]]:
        parts = getattr(pl_module, "backbone_parts", None)
        if parts is None:
            raise ConfigError(
                f"{type(pl_module).__name__} has no backbone_parts(); "
                "BackboneFreezeUnfreeze only works with tbclf.models.TimmClassifier"
            )
        return parts()

    def _freeze(self, modules: Iterable[nn.Module]) -> None:
        for module in self.flatten_modules(list(modules)):
            for param in module.parameters(recurse=False):
                param.requires_grad = False
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True  # use running stats in eval mode
                self._frozen_bn.append(module)

    def _hold_bn_in_eval(self) -> None:
        for bn in self._frozen_bn:
            if bn.training:
                bn.eval()

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        fixed, tunable = self._parts(pl_module)
        self._frozen_bn = []
        self._unfrozen = self.freeze_epochs == 0
        self._freeze(fixed)
        if not self._unfrozen:
            self._freeze(tunable)
        # BN modes are set in on_train_epoch_start: Lightning warns about eval-mode modules at
        # fit start, and every training batch re-asserts them anyway.

    def finetune_function(
        self, pl_module: pl.LightningModule, epoch: int, optimizer: Optimizer
    ) -> None:
        # ">=" rather than "==": a run resumed after the unfreeze epoch must unfreeze again.
        if self._unfrozen or epoch < self.freeze_epochs:
            return
        _, tunable = self._parts(pl_module)
        modules = self.flatten_modules(list(tunable))
        tunable_ids = {id(m) for m in modules}
        self._frozen_bn = [bn for bn in self._frozen_bn if id(bn) not in tunable_ids]
        params, seen = [], set()
        for module in modules:
            if isinstance(module, _BatchNorm):
                module.train(pl_module.training)
            for param in module.parameters(recurse=False):
                param.requires_grad = True
                if id(param) not in seen:
                    seen.add(id(param))
                    params.append(param)
        self._unfrozen = True
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in params if id(p) not in in_optimizer]  # resumed runs have them
        if not params:
            return
        head_lr = float(optimizer.param_groups[0]["lr"])
        lr = head_lr * self.backbone_lr_factor
        optimizer.add_param_group({"params": params, "lr": lr, "name": BACKBONE_GROUP})
        self._extend_schedulers(pl_module, optimizer)
        log.info("epoch %d: backbone unfrozen (%d tensors) at lr %.3g", epoch, len(params), lr)

    def _extend_schedulers(self, pl_module: pl.LightningModule, optimizer: Optimizer) -> None:
        """Give the new group a place in the schedulers so it follows the same schedule."""
        trainer = pl_module._trainer
        if trainer is None:
            return
        n_groups = len(optimizer.param_groups)
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is not optimizer:
                continue
            base_lrs = getattr(scheduler, "base_lrs", None)
            if isinstance(base_lrs, list) and len(base_lrs) < n_groups:
                base = base_lrs[0] * self.backbone_lr_factor
                base_lrs.append(base)
                optimizer.param_groups[-1].setdefault("initial_lr", base)
            if isinstance(scheduler, ReduceLROnPlateau) and len(scheduler.min_lrs) < n_groups:
                scheduler.min_lrs.append(scheduler.min_lrs[0])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._hold_bn_in_eval()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int
    ) -> None:
        # Lightning calls model.train() after every validation run; undo it for frozen BN.
        self._hold_bn_in_eval()
