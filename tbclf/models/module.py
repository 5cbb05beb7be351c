"""Training, evaluation and prediction logic shared by every tbclf classifier.

Subclasses only build ``self.input_adapter`` (gray [0,1] -> network input) and ``self.net``
(network input -> (B, ``num_outputs``) logits); loss, optimizer, metrics and the operating
threshold live here.

The head's size comes from the data's classes (``class_names``). Two classes (healthy vs TB,
the default) are one logit, the log-odds of the second class: the binary case of a softmax,
with BCE, a threshold and a calibrated P(TB). More classes (pretraining on a folder of class
folders) are a softmax head with cross-entropy and macro AUROC / balanced accuracy; such a
model is a backbone to start from (``model.weights``), so it has no threshold or P(TB).

The input spec has one path into a model, Lightning's ``setup`` hooks: a new model takes the
data module's spec in its ``setup`` at fit, and a model that has one (a checkpoint's) hands it to
the data module in the data module's ``setup`` (fit resumed, validate, test, predict). Not a
``link_arguments`` link: a link always overwrites its target, so a checkpoint's own spec would
give way to today's ``data.*`` options, and a fit without the CLI would bypass it.

The operating threshold is chosen on the validation set at the end of each validation epoch
(``tbclf.evaluation.operating_point.choose_operating_point``) and kept in the ``threshold``
buffer, so the checkpoint that ModelCheckpoint keeps for the best ``val/auroc`` carries the
threshold picked on that same epoch; test metrics and predictions use it unchanged. With
``calibrate`` a temperature is fitted on the same validation logits (``temperature`` buffer, 1
= none) and every probability the model reports is ``sigmoid(logit / temperature)``; the
threshold is picked on those calibrated probabilities, so decisions are unchanged by it. P(TB)
and the decision go through :mod:`tbclf.evaluation.probability`, as in every other consumer.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from tbclf.data.records import BINARY_CLASSES
from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError, DataError
from tbclf.evaluation.metrics import point_metrics
from tbclf.evaluation.operating_point import KEY, OperatingPoint, choose_operating_point
from tbclf.evaluation.probability import DTYPE, decide, reported_logit, reported_probability
from tbclf.evaluation.threshold import DEFAULT_THRESHOLD, STRATEGIES
from tbclf.models.checkpoint_format import (
    checkpoint_operating_point,
    fill_missing_buffers,
    register,
)
from tbclf.models.tta import prob_to_logit, tta_probs

SCHEDULERS = ("cosine", "plateau", "none")
STAGES = ("val", "test")
PLATEAU_FACTOR = 0.1
PLATEAU_PATIENCE = 3
MONITOR = "val/auroc"

SchedulerName = Literal["cosine", "plateau", "none"]
ThresholdStrategy = Literal["sensitivity", "youden"]


class TBClassifier(pl.LightningModule):
    """Binary TB classifier: BCE-with-logits, AdamW, AUROC/sensitivity/specificity metrics.

    Args:
        lr: AdamW learning rate (of the head, for backbones with a separate group).
        weight_decay: AdamW decoupled weight decay.
        scheduler: "cosine" (over trainer.max_epochs), "plateau" (ReduceLROnPlateau on
            val/auroc) or "none".
        pos_weight: weight of the TB class in the loss (e.g. n_healthy / n_tb); "auto" =
            n_healthy / n_tb of the training split, counted when training starts; None = 1.
        label_smoothing: targets pulled towards 0.5 by this amount (0 = hard 0/1 labels).
        calibrate: fit a temperature on the validation logits (temperature scaling) each
            validation epoch; it is saved in the checkpoint and divides every logit the model
            reports (test, predict, export, serve). AUROC and decisions do not change.
        threshold_strategy: how the operating threshold is picked on validation data.
        target_sensitivity: sensitivity the "sensitivity" strategy must reach on validation.
        channels_last: channels-last memory layout for model and input on CUDA.
        input_spec: what the model takes (:class:`tbclf.data.spec.InputSpec` as a dict). None
            for a new model: it takes the data module's when training starts (``setup``) and
            saves it with the hyperparameters; every later consumer (test, predict, explain,
            export, serve) reads it from here.
        class_names: the classes, in label order; set from the data (``data.layout: classes``
            takes them from the folder names). None: healthy vs TB.
        weights_origin: where the starting weights came from (path, SHA-256); recorded from
            ``model.weights`` when the model is built, not set by hand.
    """

    input_adapter: nn.Module
    net: nn.Module

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(cls)  # a checkpoint may name it (tbclf's own classes only)

    def __init__(
        self,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        scheduler: SchedulerName = "cosine",
        pos_weight: float | Literal["auto"] | None = None,
        label_smoothing: float = 0.0,
        calibrate: bool = False,
        threshold_strategy: ThresholdStrategy = "sensitivity",
        target_sensitivity: float = 0.9,
        channels_last: bool = True,
        input_spec: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        weights_origin: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Called here, it records the subclass's arguments too (Lightning walks the __init__
        # frames), so every hparams.yaml lists the whole signature, defaults included.
        self.save_hyperparameters()
        self.input_spec = InputSpec.from_dict(input_spec, where="model.input_spec")
        if lr <= 0:
            raise ConfigError(f"model.lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"model.weight_decay must be >= 0, got {weight_decay}")
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"model.scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
        if pos_weight is not None and pos_weight != "auto" and not float(pos_weight) > 0:
            raise ConfigError(f"model.pos_weight must be > 0, 'auto' or null, got {pos_weight}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"model.label_smoothing must be in [0, 1), got {label_smoothing}")
        if threshold_strategy not in STRATEGIES:
            raise ConfigError(
                f"model.threshold_strategy must be one of {STRATEGIES}, got {threshold_strategy!r}"
            )
        if not 0.0 < target_sensitivity <= 1.0:
            raise ConfigError(
                f"model.target_sensitivity must be in (0, 1], got {target_sensitivity}"
            )
        names = [str(n) for n in class_names] if class_names else list(BINARY_CLASSES)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigError(
                f"model.class_names needs two or more distinct names, got {class_names!r}"
            )
        self.class_names = names
        # Two classes: one logit (the log-odds of class 1); more: one logit per class.
        self.num_outputs = 1 if len(names) == 2 else len(names)
        if self.multiclass and calibrate:
            raise ConfigError(
                f"model.calibrate fits a temperature to P({names[1]}) of a two-class model; "
                f"this one has {len(names)} classes ({', '.join(names)}): set it to false"
            )
        if self.multiclass and pos_weight is not None:
            raise ConfigError(
                f"model.pos_weight weighs the positive class of a two-class model; this one has "
                f"{len(names)} classes: set it to null"
            )
        self.weights_origin = dict(weights_origin) if weights_origin else None
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.scheduler_name = scheduler
        self.pos_weight_option = pos_weight
        self.pos_weight = None if pos_weight in (None, "auto") else float(pos_weight)
        self.label_smoothing = float(label_smoothing)
        self.calibrate = bool(calibrate)
        # Test-time augmentation of the Trainer's validate/test/predict steps (`--tta true`),
        # set by the CLI only: a run-time choice, not a hyperparameter. Library calls pass
        # `tta` explicitly (score_logits, predict_proba).
        self.tta = False
        # How the threshold was chosen, as its checkpoint records it (e.g. re-picked on a
        # site's images by `tbclf rethreshold`); None: on this run's validation split.
        self.recorded_operating_point: OperatingPoint | None = None
        self.threshold_strategy = threshold_strategy
        self.target_sensitivity = float(target_sensitivity)
        self.channels_last = bool(channels_last)

        self.register_buffer("threshold", torch.tensor(DEFAULT_THRESHOLD, dtype=torch.float32))
        self.register_buffer("temperature", torch.tensor(1.0, dtype=torch.float32))
        self._collected: dict[str, list[dict[str, Any]]] = {stage: [] for stage in STAGES}
        # Last epoch's per-image results (numpy arrays "id", "source", "prob", "label"), for the
        # report code; None until a validation / test epoch has run.
        self.val_outputs: dict[str, np.ndarray] | None = None
        self.test_outputs: dict[str, np.ndarray] | None = None

    # ----------------------------------------------------------------- model
    @property
    def multiclass(self) -> bool:
        """More than two classes: a softmax head (pretraining), no threshold and no P(TB)."""
        return self.num_outputs > 1

    def record_weights_origin(self, origin: dict[str, Any]) -> None:
        """Keep where the starting weights came from with the hyperparameters (checkpoint,
        hparams.yaml, predictions.json). Saved again as a whole because under LightningCLI the
        hyperparameters are the parsed config, which cannot know the file's hash."""
        self.weights_origin = dict(origin)
        self.record_hparams(weights_origin=dict(origin))

    def record_hparams(self, **changes: Any) -> None:
        """Change hyperparameters where both the checkpoint (``hparams``) and hparams.yaml
        (Lightning logs ``hparams_initial``) read them."""
        self.save_hyperparameters({**self.hparams, **changes})

    @classmethod
    def load(cls, path: str, map_location: str | torch.device = "cpu") -> TBClassifier:
        """A trained tbclf classifier from its checkpoint (safe: weights only, tbclf classes
        only), in eval mode, with its threshold and ``input_spec``."""
        from tbclf.models.loading import load_classifier

        model = load_classifier(path, map_location)
        if not isinstance(model, cls):
            raise ConfigError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def _network_spec(self) -> None:
        """Fill the spec's network side from the input adapter (subclasses call this)."""
        adapter = self.input_adapter
        normalized = bool(getattr(adapter, "normalize", False))
        self.input_spec = self.input_spec.with_network(
            getattr(adapter, "in_chans", 1),
            adapter.mean.flatten().tolist() if normalized else None,
            adapter.std.flatten().tolist() if normalized else None,
        )

    @property
    def own_input_spec(self) -> InputSpec | None:
        """The spec this model already has (given, from a checkpoint, or set by a fit); None
        for a new model, which takes the data module's when it is fitted."""
        return self.input_spec if self.hparams.get("input_spec") is not None else None

    def set_input_spec(self, spec: InputSpec) -> None:
        """Adopt the training data's spec (pixel side) and record it in the hyperparameters."""
        self.check_input_spec(spec)
        self.input_spec = InputSpec.from_dict(spec.pixel_options()).with_network(
            self.input_spec.in_chans, self.input_spec.mean, self.input_spec.std
        )
        self.record_hparams(input_spec=self.input_spec.to_dict())

    def check_input_spec(self, spec: InputSpec) -> None:
        """Raise ConfigError when the network cannot take images of this spec."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The class to rebuild, also for checkpoints saved outside LightningCLI (which adds it).
        hparams = checkpoint.get("hyper_parameters")
        if hparams is not None and "_class_path" not in hparams:
            cls = type(self)
            checkpoint["hyper_parameters"] = {
                **hparams,
                "_class_path": f"{cls.__module__}.{cls.__qualname__}",
            }
        checkpoint[KEY] = self.operating_point().to_dict()

    def operating_point(self) -> OperatingPoint:
        """The threshold and temperature the model uses, with how the threshold was chosen."""
        recorded = self.recorded_operating_point or OperatingPoint(
            threshold=DEFAULT_THRESHOLD,
            strategy=self.threshold_strategy,
            target_sensitivity=(
                self.target_sensitivity if self.threshold_strategy == "sensitivity" else None
            ),
            source="validation",
        )
        return recorded.with_threshold(float(self.threshold), float(self.temperature))

    def setup(self, stage: str) -> None:
        # The one place a new model gets its spec: the data module's, when it is fitted. A
        # model that has one keeps it (the data module took it over in its own setup).
        trainer = self._trainer
        spec = getattr(getattr(trainer, "datamodule", None), "input_spec", None)
        fitting = str(getattr(stage, "value", stage)) == "fit"
        if fitting and self.own_input_spec is None and isinstance(spec, InputSpec):
            self.set_input_spec(spec)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) images in [0, 1] -> (B,) logits, or (B, K) for K > 2 classes."""
        logits = self.net(self.input_adapter(images))
        return logits if self.multiclass else logits[:, 0]

    def score_logits(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """(B,) float32 score logits before the temperature: the network's, or with ``tta``
        the logit of the probability averaged over the test-time views. (B, K) for a
        multi-class model, which has no TTA."""
        if tta and not self.multiclass:
            return prob_to_logit(tta_probs(self, images).to(DTYPE))
        return self(images).to(DTYPE)

    def calibrated_logits(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """(B,) the logits the model reports (P(TB) = sigmoid(these)): what export traces."""
        return reported_logit(self.score_logits(images, tta), self.temperature)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """(B,) P(TB) for prepared (B, 1, S, S) images, exactly as `predict` reports it."""
        return reported_probability(self.score_logits(images, tta), self.temperature)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        fill_missing_buffers(checkpoint)
        self.recorded_operating_point = checkpoint_operating_point(checkpoint)

    def head_keys(self) -> set[str]:
        """Keys of ``self.net``'s state dict that form the head (the logits layer): what a
        transfer to another task drops (``model.weights``, ``tbclf backbone``)."""
        raise NotImplementedError

    def target_layer(self) -> nn.Module:
        """The module whose output is the last convolutional feature map (for Grad-CAM)."""
        raise NotImplementedError

    def _to_channels_last(self) -> None:
        if self.channels_last and self.device.type == "cuda":
            self.net.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        self._to_channels_last()
        if self.pos_weight_option == "auto":
            self.pos_weight = self._auto_pos_weight()

    def _auto_pos_weight(self) -> float:
        split = getattr(getattr(self._trainer, "datamodule", None), "split", None) or {}
        labels = [r.label for r in split.get("train", [])]
        n_tb, n_healthy = labels.count(1), labels.count(0)
        if not n_tb or not n_healthy:
            raise ConfigError(
                "model.pos_weight=auto counts the training split's classes, but the data "
                f"module gave {n_tb} TB and {n_healthy} healthy training images; set a number."
            )
        return n_healthy / n_tb

    def on_validation_start(self) -> None:
        self._to_channels_last()

    def on_test_start(self) -> None:
        self._to_channels_last()

    def on_predict_start(self) -> None:
        self._to_channels_last()

    # ------------------------------------------------------------ optimizer
    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters as AdamW param groups (subclasses split head/backbone)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "name": "model"}]

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(
            self.optimizer_param_groups(), lr=self.lr, weight_decay=self.weight_decay
        )
        if self.scheduler_name == "none":
            return optimizer
        if self.scheduler_name == "cosine":
            max_epochs = self.trainer.max_epochs
            if max_epochs is None or max_epochs < 1:
                raise ConfigError(
                    "model.scheduler: cosine needs a finite trainer.max_epochs "
                    f"(got {max_epochs}); set trainer.max_epochs or use scheduler: plateau"
                )
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": MONITOR, "interval": "epoch"},
        }

    # ----------------------------------------------------------------- steps
    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.multiclass:
            return F.cross_entropy(logits, labels.long(), label_smoothing=self.label_smoothing)
        pos_weight = (
            None
            if self.pos_weight is None
            else torch.tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
        )
        if self.label_smoothing:
            labels = labels * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        return F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labels = batch["label"].float()
        if torch.isnan(labels).any():
            missing = torch.isnan(labels).tolist()
            ids = [i for i, bad in zip(batch["id"], missing, strict=True) if bad]
            raise DataError(f"training images without a label: {ids[:10]}")
        logits = self(batch["image"]).float()
        loss = self._loss(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=labels.numel())  # fmt: skip
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        logits = self.score_logits(batch["image"], self.tta)
        labels = batch["label"].float().to(logits.device)
        labeled = ~torch.isnan(labels)
        if labeled.any():
            loss = self._loss(logits[labeled], labels[labeled])
            self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val",
                     batch_size=int(labeled.sum()), sync_dist=True)  # fmt: skip
        n = labels.numel()
        index = batch.get("index")
        self._collected[stage].append(
            {
                "id": [str(i) for i in batch["id"]],
                "source": [str(s) for s in batch.get("source", [""] * n)],
                "view": [str(v) for v in batch.get("view", [""] * n)],
                "logit": logits.detach().cpu().numpy().astype(np.float32),
                "label": labels.detach().cpu().numpy().astype(np.float32),
                # Position in the data set (None from loaders without it): see _gathered.
                "index": None if index is None else torch.as_tensor(index).cpu().numpy(),
            }
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> dict[str, Any]:
        """Per image: id, source, TB probability, decision (prob >= threshold) and label."""
        if self.multiclass:
            raise ConfigError(
                f"this is a {self.num_outputs}-class model ({', '.join(self.class_names)}), a "
                "backbone to start a TB model from (--model.init_args.weights CKPT), not a TB "
                "classifier: predict needs a two-class model"
            )
        probs = self.predict_proba(batch["image"], self.tta).cpu()
        n = probs.numel()
        label = batch.get("label")
        return {
            "id": [str(i) for i in batch["id"]],
            "source": [str(s) for s in batch.get("source", [""] * n)],
            "view": [str(v) for v in batch.get("view", [""] * n)],
            "prob": probs,
            "decision": torch.from_numpy(decide(probs, self.threshold)),
            "label": torch.full((n,), float("nan")) if label is None else label.float().cpu(),
        }

    # ------------------------------------------------------------- epoch end
    def on_validation_epoch_start(self) -> None:
        self._collected["val"] = []

    def on_test_epoch_start(self) -> None:
        self._collected["test"] = []

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._epoch_end("test")

    def _gathered(self, stage: str) -> dict[str, np.ndarray]:
        """This epoch's outputs from every rank, each image exactly once.

        DDP's DistributedSampler pads the evaluation set with repeats so that every rank gets
        as many batches; those repeats would count twice in AUROC, the threshold and the
        report. Items carry their data set position ("index"): the gathered outputs keep the
        first of each and come back in data set order, the same order whatever the number of
        processes. Without an index (other loaders) every item is kept as it came.
        """
        parts = self._collected[stage]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(world, parts)
            parts = [p for rank_parts in world for p in rank_parts]
        self._collected[stage] = []
        if not parts:
            return {
                "id": np.array([], dtype=str),
                "source": np.array([], dtype=str),
                "view": np.array([], dtype=str),
                "logit": np.array([], dtype=np.float32),
                "label": np.array([], dtype=np.float32),
            }
        out = {
            "id": np.array([i for p in parts for i in p["id"]], dtype=str),
            "source": np.array([s for p in parts for s in p["source"]], dtype=str),
            "view": np.array(
                [v for p in parts for v in p.get("view", [""] * len(p["id"]))], dtype=str
            ),
            "logit": np.concatenate([p["logit"] for p in parts]),
            "label": np.concatenate([p["label"] for p in parts]),
        }
        if any(p.get("index") is None for p in parts):
            return out
        index = np.concatenate([np.asarray(p["index"]).reshape(-1) for p in parts])
        _, first = np.unique(index, return_index=True)  # sorted by index, first occurrence
        return {key: value[first] for key, value in out.items()}

    def _epoch_end(self, stage: str) -> None:
        outputs = self._gathered(stage)
        sanity = self._trainer is not None and self.trainer.sanity_checking
        if sanity:
            return  # a couple of batches: no threshold, no metrics, no warnings
        if self.multiclass:
            self._multiclass_epoch_end(stage, outputs)
            return
        labeled = ~np.isnan(outputs["label"])
        if stage == "val" and self.calibrate:
            from tbclf.evaluation.calibration import fit_temperature

            temperature = fit_temperature(outputs["logit"][labeled], outputs["label"][labeled])
            self.temperature.fill_(temperature)
            self.log("val/temperature", float(self.temperature), sync_dist=True)
        # The probabilities every later step reports, as predict_step computes them.
        outputs["prob"] = reported_probability(outputs["logit"], self.temperature.cpu()).numpy()
        setattr(self, f"{stage}_outputs", outputs)
        probs, labels = outputs["prob"][labeled], outputs["label"][labeled]
        if stage == "val":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # warned about below
                chosen = choose_operating_point(
                    probs,
                    labels,
                    self.threshold_strategy,
                    self.target_sensitivity,
                    source="validation",
                    temperature=float(self.temperature),
                )
            self.threshold.fill_(chosen.threshold)
            self.recorded_operating_point = None  # this run's validation split chose it
        threshold = float(self.threshold)
        # Every rank holds the gathered outputs, so these values agree across ranks already.
        self.log(f"{stage}/threshold", threshold, sync_dist=True)
        if labels.size == 0:
            return  # unlabeled images: outputs kept, nothing to score
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if n_pos == 0 or n_neg == 0:
            warnings.warn(
                f"{stage} set has {n_pos} TB and {n_neg} healthy labelled images: AUROC needs "
                f"both classes and is logged as NaN; threshold used: {threshold}",
                RuntimeWarning,
                stacklevel=2,
            )
        # tbclf's one implementation of the metrics (numpy; NaN where a class is absent).
        point = point_metrics(probs, labels, threshold)
        logged = ("auroc", "accuracy", "sensitivity", "specificity", "f1")
        values = {f"{stage}/{name}": point[name] for name in logged}
        for name, value in values.items():
            self.log(name, value, prog_bar=name == MONITOR, sync_dist=True)

    def _multiclass_epoch_end(self, stage: str, outputs: dict[str, np.ndarray]) -> None:
        """Macro AUROC (monitored as ``{stage}/auroc``), balanced accuracy, accuracy and
        each class's one-vs-rest AUROC, from torchmetrics."""
        from torchmetrics.functional.classification import (
            multiclass_accuracy,
            multiclass_auroc,
        )

        setattr(self, f"{stage}_outputs", outputs)
        labeled = ~np.isnan(outputs["label"])
        if not labeled.any():
            return
        probs = torch.from_numpy(outputs["logit"][labeled]).float().softmax(dim=1)
        labels = torch.from_numpy(outputs["label"][labeled]).long()
        k = self.num_outputs
        per_class = multiclass_auroc(probs, labels, num_classes=k, average=None)
        values = {
            f"{stage}/auroc": multiclass_auroc(probs, labels, num_classes=k, average="macro"),
            # Balanced accuracy is the macro average of the per-class recalls.
            f"{stage}/balanced_accuracy": multiclass_accuracy(
                probs, labels, num_classes=k, average="macro"
            ),
            f"{stage}/accuracy": multiclass_accuracy(probs, labels, num_classes=k, average="micro"),
        }
        values.update(
            {f"{stage}/auroc_{name}": per_class[i] for i, name in enumerate(self.class_names)}
        )
        for name, value in values.items():
            self.log(name, float(value), prog_bar=name == MONITOR, sync_dist=True)
