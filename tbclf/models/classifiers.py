"""The two classifiers the configs name: a timm transfer-learning model and the small CNN.

Arguments are plain typed values with defaults so LightningCLI (subclass mode, e.g.
``class_path: tbclf.models.TimmClassifier``) can build them from YAML. The common training
arguments live once, on :class:`tbclf.models.module.TBClassifier`: each subclass passes
``**kwargs`` on to it, and jsonargparse follows that call to list them as ``model.init_args.*``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from torch import nn

from tbclf.data.spec import InputSpec
from tbclf.errors import ConfigError
from tbclf.models.backbone import (
    create_backbone,
    head_keys,
    init_head,
    load_backbone,
    read_state_dict,
    weights_origin,
)
from tbclf.models.finetuning import BACKBONE_GROUP, BackboneFreezeUnfreeze
from tbclf.models.input import InputAdapter, timm_input_adapter
from tbclf.models.module import TBClassifier
from tbclf.models.shipped_weights import resolve_weights
from tbclf.models.simple_cnn import SimpleCNN


class TimmClassifier(TBClassifier):
    """A timm backbone (ImageNet-pretrained by default) with a fresh 1-logit head.

    Args:
        backbone: timm model name.
        pretrained: download timm's pretrained weights (needs internet or a warm HF cache).
        weights: local weights file; wins over ``pretrained``: ImageNet weights (timm or
            torchvision layout), a tbclf checkpoint (e.g. a chest X-ray pretraining run) or an
            exported backbone (``tbclf backbone``). Its backbone is loaded, its head dropped;
            its path and SHA-256 are recorded (``weights_origin``). The offline ImageNet route:
            ``python -c "from tbclf.models.backbone import offline_mobilenetv2_weights as f;
            print(f())"`` prints a MobileNetV2 file.
        in_chans: 3 (gray image repeated, RGB normalisation) or 1 (first conv summed over RGB).
        drop_rate: dropout before the classifier.
        freeze_epochs: epochs training only the head on a frozen backbone (BN stats frozen too);
            0 trains everything from the start.
        unfreeze_from: None unfreezes the whole backbone; an int k keeps the stem and
            ``blocks[:k]`` frozen for the whole run.
        backbone_lr_factor: backbone learning rate = head learning rate * this factor.
        head_init: how the fresh head starts. ``timm``: the backbone's own initialisation
            (for MobileNetV2 uniform in +-1/sqrt(outputs), i.e. +-1 for the TB logit: initial
            logits from -8 to +18 on chest X-rays). ``zero``: weights and bias 0, so every
            image starts at P = 0.5. Measured in benchmarks/README.md; the configs keep
            ``timm``.
        **kwargs: the training options of :class:`tbclf.models.module.TBClassifier` (lr,
            weight_decay, scheduler, pos_weight, threshold_strategy, ...).
    """

    def __init__(
        self,
        backbone: str = "mobilenetv2_100",
        pretrained: bool = True,
        weights: str | None = None,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        freeze_epochs: int = 5,
        unfreeze_from: int | None = None,
        backbone_lr_factor: float = 0.1,
        head_init: str = "timm",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("_class_path", None)  # on_save_checkpoint's note for the loader
        super().__init__(**kwargs)  # saves this signature's arguments and the common ones
        weights = _recorded_weights(self, weights)
        if freeze_epochs < 0:
            raise ConfigError(f"model.freeze_epochs must be >= 0, got {freeze_epochs}")
        if backbone_lr_factor <= 0:
            raise ConfigError(f"model.backbone_lr_factor must be > 0, got {backbone_lr_factor}")
        if not 0.0 <= drop_rate < 1.0:
            raise ConfigError(f"model.drop_rate must be in [0, 1), got {drop_rate}")
        self.freeze_epochs = int(freeze_epochs)
        self.unfreeze_from = unfreeze_from
        self.backbone_lr_factor = float(backbone_lr_factor)
        self.net = create_backbone(
            backbone,
            pretrained=pretrained,
            weights=weights,
            in_chans=in_chans,
            drop_rate=drop_rate,
            num_classes=self.num_outputs,
        )
        init_head(self.net.get_classifier(), head_init)

        self.input_adapter = timm_input_adapter(self.net, in_chans, self.channels_last)
        self._network_spec()
        if unfreeze_from is not None:
            blocks = getattr(self.net, "blocks", None)
            if not isinstance(blocks, nn.Sequential):
                raise ConfigError(
                    f"model.unfreeze_from needs a backbone with a `blocks` sequence "
                    f"(mobilenet/efficientnet families); {backbone!r} has none: use null"
                )
            if not 0 <= unfreeze_from < len(blocks):
                raise ConfigError(
                    f"model.unfreeze_from must be in [0, {len(blocks) - 1}] for {backbone!r} "
                    f"({len(blocks)} blocks), got {unfreeze_from}"
                )

    def head(self) -> nn.Module:
        return self.net.get_classifier()

    def head_keys(self) -> set[str]:
        return head_keys(self.net)

    def backbone_parts(self) -> tuple[list[nn.Module], list[nn.Module]]:
        """(always frozen, unfrozen after ``freeze_epochs``) children of the network."""
        head = self.head()
        children = [(name, m) for name, m in self.net.named_children() if m is not head]
        if self.unfreeze_from is None:
            return [], [m for _, m in children]
        fixed: list[nn.Module] = []
        tunable: list[nn.Module] = []
        after_blocks = False
        for name, module in children:
            if name == "blocks":
                fixed += list(module[: self.unfreeze_from])
                tunable += list(module[self.unfreeze_from :])
                after_blocks = True
            elif after_blocks:
                tunable.append(module)
            else:
                fixed.append(module)
        return fixed, tunable

    def optimizer_param_groups(self) -> list[dict[str, Any]]:
        head_ids = {id(p) for p in self.head().parameters()}
        head = [p for p in self.head().parameters() if p.requires_grad]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in head_ids]
        groups: list[dict[str, Any]] = [{"params": head, "name": "head"}]
        if rest:  # freeze_epochs=0: the backbone trains from the start at the lower rate
            groups.append(
                {"params": rest, "lr": self.lr * self.backbone_lr_factor, "name": BACKBONE_GROUP}
            )
        return groups

    def configure_callbacks(self) -> list:
        if self.freeze_epochs == 0 and self.unfreeze_from is None:
            return []
        return [BackboneFreezeUnfreeze(self.freeze_epochs, self.backbone_lr_factor)]

    def target_layer(self) -> nn.Module:
        net = self.net
        bn2 = getattr(net, "bn2", None)
        if isinstance(getattr(net, "conv_head", None), nn.Conv2d) and isinstance(bn2, nn.Module):
            return bn2  # mobilenet/efficientnet: head conv + BN + activation
        info = getattr(net, "feature_info", None)
        if info:
            return net.get_submodule(info[-1]["module"])
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        return convs[-1]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        _drop_weights_file(checkpoint, pretrained=False)


class SimpleCNNClassifier(TBClassifier):
    """The from-scratch baseline CNN (see :class:`tbclf.models.simple_cnn.SimpleCNN`).

    Args:
        channels: conv block widths.
        kernel_sizes: conv kernel sizes, one per block.
        padding: "same" or "valid" for every conv, or one value per conv.
        batch_norm: BatchNorm after each conv.
        dropout: dropout after each dense layer of the head (0 = none).
        head: dense layer widths before the logit.
        adaptive_pool: average-pool the features to this size before flattening (None = plain
            flatten as the original; then ``image_size`` must equal the data's image size).
        image_size: input side length, used to size the first dense layer. None: the input
            spec's (a new model's layers are sized again for the data's when it is fitted).
        weights: a tbclf checkpoint of this architecture (e.g. a chest X-ray pretraining run) or
            an exported backbone file (``tbclf backbone``): every layer but the last (the head)
            starts from it; path and SHA-256 are recorded (``weights_origin``).
        **kwargs: the training options of :class:`tbclf.models.module.TBClassifier` (lr,
            weight_decay, scheduler, pos_weight, threshold_strategy, ...).
    """

    def __init__(
        self,
        channels: list[int] = [16, 32, 32, 64],  # noqa: B006 (copied, never mutated)
        kernel_sizes: list[int] = [3, 3, 6, 6],  # noqa: B006
        padding: str | list[str] = "same",
        batch_norm: bool = False,
        dropout: float = 0.0,
        head: list[int] = [64, 32, 16],  # noqa: B006
        adaptive_pool: int | None = None,
        image_size: int | None = None,
        weights: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("_class_path", None)  # on_save_checkpoint's note for the loader
        super().__init__(**kwargs)  # saves this signature's arguments and the common ones
        self._weights = _recorded_weights(self, weights)
        self._fixed_size = image_size is not None
        self.adaptive_pool = adaptive_pool
        self._build(self.input_spec.image_size if image_size is None else int(image_size))

        self.input_adapter = InputAdapter(
            in_chans=1, mean=(0.5,), std=(0.5,), channels_last=self.channels_last
        )
        self._network_spec()

    def _build(self, image_size: int) -> None:
        """The network for `image_size` inputs, from ``weights`` when given."""
        try:
            # The architecture arguments are SimpleCNN's own, under the same names.
            arch = inspect.signature(SimpleCNN).parameters
            skip = ("num_classes", "image_size")
            self.net = SimpleCNN(
                in_chans=1,
                num_classes=self.num_outputs,
                image_size=image_size,
                **{k: v for k, v in self.hparams.items() if k in arch and k not in skip},
            )
        except ValueError as e:
            raise ConfigError(f"model (SimpleCNNClassifier): {e}") from e
        if self._weights is not None:
            load_backbone(
                self.net,
                read_state_dict(self._weights),
                self.net.head_keys(),
                self._weights,
                "SimpleCNNClassifier",
            )
        self.image_size = int(image_size)

    def set_input_spec(self, spec: InputSpec) -> None:
        # A new model takes its data's image size (a plain-flatten one without an image_size of
        # its own is built again for it); image_size records it, as the data's options do.
        sized = self.adaptive_pool is not None or not self._fixed_size
        if sized and self.own_input_spec is None:
            if spec.image_size != self.image_size:
                if self.adaptive_pool is None:
                    self._build(spec.image_size)
                self.image_size = spec.image_size
            self.record_hparams(image_size=spec.image_size)
        super().set_input_spec(spec)

    def check_input_spec(self, spec: InputSpec) -> None:
        if self.adaptive_pool is None and spec.image_size != self.image_size:
            raise ConfigError(
                f"SimpleCNNClassifier without adaptive_pool is sized for {self.image_size}px "
                f"inputs, but the data gives {spec.image_size}px: set model.image_size to "
                f"{spec.image_size} or model.adaptive_pool"
            )

    def head_keys(self) -> set[str]:
        return self.net.head_keys()

    def target_layer(self) -> nn.Module:
        return self.net.target_layer()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        _drop_weights_file(checkpoint)


def _recorded_weights(model: TBClassifier, weights: str | None) -> Path | None:
    """The starting-weights file as a path, its origin recorded on ``model`` first so a
    checkpoint always says which file its weights began from."""
    path = None if weights is None else resolve_weights(weights)
    if path is not None:
        model.record_weights_origin(weights_origin(path))
    return path


def _drop_weights_file(checkpoint: dict[str, Any], **also: Any) -> None:
    """The weights are in the checkpoint: loading it must not download or need the file (its
    origin stays recorded in ``weights_origin``)."""
    hparams = checkpoint.get("hyper_parameters")
    if hparams is not None:  # a copy: the running model's hparams stay as given
        checkpoint["hyper_parameters"] = {**hparams, **also, "weights": None}
