"""What storing a pretraining run's backbone in fp16 (or bf16) costs, on the run's own
validation images.

``tbclf backbone`` writes the backbone in fp16 by default, so the shipped files are half the
size; this script is the check that the rounding loses nothing measurable: the run's best
checkpoint is scored twice on the validation part of its ``split.json``, as trained and with
the backbone's tensors rounded to ``--dtype`` exactly as the export rounds them (the head
stays as trained: fine-tuning replaces it). The pretraining table in benchmarks/README.md
quotes its output.

    python benchmarks/backbone_dtype.py --run runs/pretrain_cxr/version_0 \
        --cache /tmp/tbclf_cache --dtype float16
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tbclf.models.module import TBClassifier


def rounded(model: TBClassifier, dtype: str) -> TBClassifier:
    """A copy of ``model`` whose backbone is what a ``dtype`` backbone file would restore."""
    from tbclf.models.backbone_file import headless_state_as

    out = copy.deepcopy(model)
    out.net.load_state_dict(headless_state_as(out, dtype), strict=False)  # the head stays
    return out


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Macro AUROC over the classes and accuracy: the run's own validation metrics."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_auroc

    k = logits.shape[1]
    probs = logits.softmax(1)
    return {
        "auroc_macro": float(multiclass_auroc(probs, labels, num_classes=k, average="macro")),
        "balanced_accuracy": float(
            multiclass_accuracy(probs, labels, num_classes=k, average="macro")
        ),
    }


def validation_module(run: Path, cache: str | None, root: str | None):
    """The run's data module on its recorded split (its fit config's data section, split.json)."""
    from tbclf.data.datamodule import TBDataModule
    from tbclf.engine.lifecycle import recorded_config
    from tbclf.errors import ConfigError

    config_path, config = recorded_config(run)
    if config_path is None or not (run / "split.json").is_file():
        raise ConfigError(f"{run} has no readable config.yaml and split.json; --run takes a "
                          "tbclf run folder (runs/NAME/version_N).")  # fmt: skip
    data = dict(config.get("data") or {})
    if not data:
        raise ConfigError(f"{config_path} has no 'data' section.")
    data.update(
        split_file=str(run / "split.json"), num_workers=0, predict_root=None, download=False
    )
    if cache:
        data["cache_dir"] = cache
    if root:
        data["root"] = root
    module = TBDataModule(**data)
    module.setup("validate")
    return module


def compare(
    run: Path, dtype: str, cache: str | None = None, root: str | None = None
) -> dict[str, Any]:
    """Validation scores of the run's best checkpoint as trained and with a rounded backbone."""
    from tbclf.models.loading import load_classifier

    model = load_classifier(run / "checkpoints" / "best.ckpt", two_class=False)
    if not model.multiclass:
        raise SystemExit(f"{run} is a two-class run; --run takes a pretraining run's folder.")
    models = {"float32": model, dtype: rounded(model, dtype)}
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    labels = []
    with torch.no_grad():
        for batch in validation_module(run, cache, root).val_dataloader():
            for name, net in models.items():
                logits[name].append(net(batch["image"]))
            labels.append(batch["label"].long())
    y = torch.cat(labels)
    full = {name: torch.cat(parts) for name, parts in logits.items()}
    return {
        "run": str(run),
        "images": int(y.numel()),
        **{name: scores(value, y) for name, value in full.items()},
        "same_class": int((full["float32"].argmax(1) == full[dtype].argmax(1)).sum()),
        "max_abs_logit_difference": float((full["float32"] - full[dtype]).abs().max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="a tbclf run folder (version_N)")
    parser.add_argument("--dtype", default="float16", help="float16 (the export's) or bfloat16")
    parser.add_argument("--cache", default=None, help="image cache folder (default: the run's)")
    parser.add_argument("--root", default=None, help="the data, if it moved since the run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(compare(args.run, args.dtype, args.cache, args.root), indent=2))


if __name__ == "__main__":
    main()
