"""5-fold cross-validation of both models and three preprocessings on a labelled data set.

Each fold holds out one fifth of the images as its test set (duplicates kept together); the
model is trained on the rest, stopped early and thresholded on a validation part of it, and
scored once on the held-out fold. The table gives test AUROC mean and spread over folds.

    python benchmarks/cross_validation.py --data ../shared/data/tb-cxr-dev --out /tmp/cv
    python benchmarks/cross_validation.py --data DIR --out DIR --variants mobilenet_ft:clahe
    python benchmarks/cross_validation.py ... --set unfreeze_from=2 --tag uf2   # a model option

Each fold also keeps its held-out predictions (test_predictions.json), so the table adds the
AUROC of all folds' predictions pooled, and a second table gives it per image source.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from tbclf.evaluation.probability import reported_probability
from tbclf.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    # name: (config, model overrides)
    "simple_cnn": ("simple_cnn.yaml", {}),
    "mobilenet_ft": ("mobilenet.yaml", {}),
    "mobilenet_frozen": ("mobilenet.yaml", {"freeze_epochs": 10_000}),
}
DEFAULT_RUNS = [
    "simple_cnn:none",
    "simple_cnn:equalize",
    "simple_cnn:clahe",
    "mobilenet_ft:none",
    "mobilenet_ft:equalize",
    "mobilenet_ft:clahe",
    "mobilenet_frozen:clahe",
]


@functools.cache
def load_config(name: str) -> dict:
    """configs/NAME as a dict (read once; callers must not change it)."""
    return yaml.safe_load((REPO / "configs" / name).read_text())


def run_fold(variant: str, preprocessing: str, fold: int, args: argparse.Namespace) -> dict:
    """Train one fold and return its held-out test metrics."""
    out = fold_dir(args.out, args.tag, variant, preprocessing, fold)
    split = {"num_folds": args.folds, "fold": fold}
    return train_and_score(variant, preprocessing, args, split, out, {"fold": fold})


def train_and_score(
    variant: str,
    preprocessing: str,
    args: argparse.Namespace,
    split: dict,
    out: Path,
    extra: dict,
) -> dict:
    """Train `variant` on the `split` options' train part (early stopping and threshold on its
    val part), score its test part once, and keep the row and the test predictions in `out`."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    import tbclf.models as models
    from tbclf.data.datamodule import TBDataModule
    from tbclf.engine.scripting import quiet_trainer
    from tbclf.models.backbone import offline_mobilenetv2_weights

    torch.set_num_threads(max(1, args.threads))
    config_name, overrides = VARIANTS[variant]
    config = load_config(config_name)
    model_cfg = config["model"]
    kwargs = {**model_cfg["init_args"], **args.set, **overrides}  # "frozen" stays frozen
    if "Timm" in model_cfg["class_path"] and not kwargs.get("weights"):
        # ImageNet offline unless a weights file is set (--set weights=backbone.safetensors).
        kwargs.update(pretrained=False, weights=str(offline_mobilenetv2_weights()))
    # The data seed fixes the folds and the training order; the model seed the weights' init
    # and dropout, so members of a seed ensemble share every split.
    pl.seed_everything(args.seed if args.model_seed is None else args.model_seed, workers=True)
    model = getattr(models, model_cfg["class_path"].rsplit(".", 1)[1])(**kwargs)
    data = TBDataModule(
        root=args.data,
        preprocessing=preprocessing,
        image_size=args.image_size or config["data"]["image_size"],
        batch_size=args.batch_size or config["data"]["batch_size"],
        num_workers=args.workers,
        seed=args.seed,
        val_fraction=0.15,
        cache_dir=args.cache,
        **split,
    )
    patience = args.patience or config["early_stopping"]["patience"]
    checkpoint = ModelCheckpoint(dirpath=out, filename="best", monitor="val/auroc", mode="max")
    callbacks = [checkpoint, EarlyStopping("val/auroc", mode="max", patience=patience)]
    if args.ema:
        from tbclf.engine.averaging import EMA

        callbacks.append(EMA(decay=args.ema))
    if args.swa is not None:
        from tbclf.engine.averaging import SWA

        callbacks.append(SWA(start=args.swa))
    trainer = quiet_trainer(
        max_epochs=args.epochs or config["trainer"]["max_epochs"],
        accelerator="auto",
        enable_checkpointing=True,
        num_sanity_val_steps=2,
        callbacks=callbacks,
        deterministic=False,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=data)
    result = trainer.test(
        model, datamodule=data, ckpt_path=checkpoint.best_model_path, verbose=False
    )[0]
    row = {
        "variant": variant,
        "preprocessing": preprocessing,
        **extra,
        "n_train": len(data.split["train"]),
        "test_auroc": float(result["test/auroc"]),
        "test_sensitivity": float(result.get("test/sensitivity", float("nan"))),
        "test_specificity": float(result.get("test/specificity", float("nan"))),
        "best_val_auroc": float(checkpoint.best_model_score),
        "epochs": int(trainer.current_epoch),
        "seconds": time.perf_counter() - start,
        "n_test": len(data.split["test"]),
        "image_size": data.image_size,
        "batch_size": data.batch_size,
        "max_epochs": trainer.max_epochs,
        "tag": args.tag,
        "set": args.set,
    }
    row["seconds_train"] = time.perf_counter() - start
    row["ema"] = args.ema
    row["swa"] = args.swa
    row["model_seed"] = args.model_seed
    outputs = {k: v.tolist() for k, v in model.test_outputs.items()}
    outputs.update(test_time_levers(checkpoint.best_model_path, data, row))
    os.remove(checkpoint.best_model_path)  # keep the output folder small
    # Atomic, predictions first: an existing result.json means the fold is finished.
    atomic_write_text(out / "test_predictions.json", json.dumps(outputs))
    atomic_write_text(out / "result.json", json.dumps(row, indent=1))
    return row


def test_time_levers(ckpt: str, data, row: dict) -> dict:
    """TTA and temperature scaling on the fold's best model (no retraining): fills `row` with
    their test AUROC, sens./spec. at a validation-chosen threshold, Brier, ECE and NLL, and
    returns the TTA test probabilities (ordered like the test predictions)."""
    from tbclf.engine.scoring import score_loader
    from tbclf.evaluation import calibration as cal
    from tbclf.evaluation.operating_point import choose_operating_point
    from tbclf.evaluation.roc import auroc
    from tbclf.evaluation.threshold import sensitivity_specificity
    from tbclf.models.loading import load_classifier

    model = load_classifier(ckpt)
    val, test = data.val_dataloader(), data.test_dataloader()
    extra = {}
    for name, tta in (("", False), ("_tta", True)):
        v, t = score_loader(model, val, tta), score_loader(model, test, tta)
        point = choose_operating_point(v["prob"], v["label"], model.threshold_strategy,
                                       model.target_sensitivity, source="validation")  # fmt: skip
        thr = point.threshold
        sens, spec = sensitivity_specificity(t["prob"], t["label"], thr)
        temp = cal.fit_temperature(v["logit"], v["label"])
        calibrated = reported_probability(t["logit"], temp).numpy()
        row.update({
            f"score{name}_test_auroc": auroc(t["prob"].tolist(), t["label"].tolist()),
            f"score{name}_test_sensitivity": float(sens),
            f"score{name}_test_specificity": float(spec),
            f"score{name}_temperature": temp,
            f"score{name}_brier": cal.brier(t["prob"], t["label"]),
            f"score{name}_brier_cal": cal.brier(calibrated, t["label"]),
            f"score{name}_ece": cal.ece(t["prob"], t["label"]),
            f"score{name}_ece_cal": cal.ece(calibrated, t["label"]),
            f"score{name}_nll": cal.nll(t["logit"], t["label"]),
            f"score{name}_nll_cal": cal.nll(t["logit"], t["label"], temp),
        })  # fmt: skip
        extra[f"prob{name}_scored"] = t["prob"].tolist()
        extra[f"id{name}_scored"] = t["id"].tolist()
        # Validation predictions too: an ensemble of folds' models picks its threshold there.
        extra[f"val_prob{name}"] = v["prob"].tolist()
        extra[f"val_id{name}"] = v["id"].tolist()
        extra[f"val_label{name}"] = v["label"].tolist()
    return extra


def fold_dir(out: str, tag: str, variant: str, preprocessing: str, fold: int) -> Path:
    return Path(out) / f"{variant_name(variant, tag)}-{preprocessing}" / f"fold{fold}"


def variant_name(variant: str, tag: str) -> str:
    return f"{variant}+{tag}" if tag else variant


def run_variant(spec: str, args: argparse.Namespace) -> list[dict]:
    variant, preprocessing = spec.split(":")
    rows = []
    for fold in range(args.folds):
        done = fold_dir(args.out, args.tag, variant, preprocessing, fold) / "result.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        row = run_fold(variant, preprocessing, fold, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def with_predictions(rows: list[dict], out: str) -> list[dict]:
    """Attach each fold's held-out predictions, where the fold kept them."""
    for row in rows:
        tag = row.get("tag", "")
        path = fold_dir(out, tag, row["variant"], row["preprocessing"], row["fold"])
        path = path / "test_predictions.json"
        row["predictions"] = json.loads(path.read_text()) if path.exists() else None
    return rows


def subset(probs: list, labels: list, sources: list, source: str) -> tuple[list, list]:
    keep = [i for i, s in enumerate(sources) if s == source]
    return [probs[i] for i in keep], [labels[i] for i in keep]


def pooled_point(group: list[dict], prefix: str = "test") -> tuple[float, float]:
    """Sensitivity and specificity of all folds' test images together, each fold at its own
    validation-chosen threshold: sum of per-fold TP (TN) over all positives (negatives)."""
    tp = pos = tn = neg = 0.0
    for r in group:
        labels = r["predictions"]["label"]
        p, n = sum(1 for y in labels if y == 1), sum(1 for y in labels if y == 0)
        tp, pos = tp + r[f"{prefix}_sensitivity"] * p, pos + p
        tn, neg = tn + r[f"{prefix}_specificity"] * n, neg + n
    return tp / pos, tn / neg


def lever_rows(group: list[dict]) -> dict[str, dict]:
    """The levers measured on each fold's best model without retraining: name -> per-fold
    AUROC, sens./spec. and pooled probabilities (aligned with the fold's labels)."""
    out: dict[str, dict] = {}
    for name, key in (("TTA", "_tta"),):
        if not all(f"score{key}_test_auroc" in r and r.get("predictions") for r in group):
            continue
        probs, labels, sources = [], [], []
        for r in group:
            pred = r["predictions"]
            rows = zip(pred["id"], pred["label"], pred["source"], strict=True)
            by_id = {i: (y, s) for i, y, s in rows}
            # As the model reports them: pooled AUROC depends on each fold's scale.
            temp = float(r.get(f"score{key}_temperature", 1.0)) if calibrates(r) else 1.0
            probs += reported_probs(pred[f"prob{key}_scored"], temp).tolist()
            labels += [by_id[i][0] for i in pred[f"id{key}_scored"]]
            sources += [by_id[i][1] for i in pred[f"id{key}_scored"]]
        out[name] = {"prefix": f"score{key}_test", "prob": probs, "label": labels,
                     "source": sources}  # fmt: skip
    return out


def calibrates(row: dict) -> bool:
    """Whether the run's model reports temperature-scaled P(TB) (its config and --set)."""
    config = load_config(VARIANTS[row["variant"]][0])
    return bool({**config["model"]["init_args"], **row.get("set", {})}.get("calibrate", False))


def reported_probs(probs, temperature: float):
    """The network's stored P(TB) as the model reports it, through its fitted temperature
    (1: unchanged)."""
    import torch

    from tbclf.models.tta import prob_to_logit

    scores = prob_to_logit(torch.as_tensor(probs, dtype=torch.float32))
    return reported_probability(scores, temperature).numpy()


def fold_scores(row: dict, key: str = "") -> dict:
    """One fold's validation and test P(TB) as the model reports it (its temperature applied
    when it calibrates), sorted by image id; ``key`` "_tta" for the TTA scores."""
    import numpy as np

    pred = row["predictions"]
    truth = dict(zip(pred["id"], zip(pred["label"], pred["source"], strict=True), strict=True))
    temp = float(row.get(f"score{key}_temperature", 1.0)) if calibrates(row) else 1.0

    def part(ids: list, probs: list, labels: list) -> dict:
        order = np.argsort(np.array(ids, dtype=str), kind="stable")
        return {"id": np.array(ids, dtype=str)[order],
                "prob": reported_probs(np.array(probs)[order], temp),
                "label": np.array(labels, dtype=np.float64)[order]}  # fmt: skip

    test_ids = pred[f"id{key}_scored"]
    test = part(test_ids, pred[f"prob{key}_scored"], [truth[i][0] for i in test_ids])
    test["source"] = np.array([truth[i][1] for i in test["id"]], dtype=str)
    val = part(pred[f"val_id{key}"], pred[f"val_prob{key}"], pred[f"val_label{key}"])
    return {"test": test, "val": val, "seconds": row["seconds"], "fold": row["fold"]}


def combine(members: list[dict]) -> dict:
    """The ensemble of several runs on one fold: mean P(TB), validation and test."""
    from tbclf.engine.scoring import average_scores

    folds = {m["fold"] for m in members}
    if len(folds) != 1:
        raise ValueError(f"ensemble members come from different folds: {sorted(folds)}")
    return {
        "test": average_scores([m["test"] for m in members]),
        "val": average_scores([m["val"] for m in members]),
        "seconds": sum(m["seconds"] for m in members),
        "fold": members[0]["fold"],
    }


def evaluate(scores: dict) -> dict:
    """Threshold for 90% sensitivity on the validation part, applied to the test part."""
    from tbclf.evaluation.operating_point import choose_operating_point
    from tbclf.evaluation.roc import auroc
    from tbclf.evaluation.threshold import sensitivity_specificity

    val, test = scores["val"], scores["test"]
    point = choose_operating_point(
        val["prob"], val["label"], "sensitivity", 0.9, source="validation"
    )
    threshold = point.threshold
    sens, spec = sensitivity_specificity(test["prob"], test["label"], threshold)
    return {
        "val_auroc": auroc(val["prob"].tolist(), val["label"].tolist()),
        "test_auroc": auroc(test["prob"].tolist(), test["label"].tolist()),
        "tp": sens * float((test["label"] == 1).sum()),
        "tn": spec * float((test["label"] == 0).sum()),
        "test": test,
        "seconds": scores["seconds"],
        "fold": scores["fold"],
    }


def select_on_validation(candidates: dict[str, list[dict]]) -> tuple[list[dict], list[str]]:
    """Nested selection: per outer fold, the candidate with the best validation AUROC (the
    validation part lies inside the fold's training data; ties go to the first, cheapest
    candidate). Only folds every candidate finished count. Returns the chosen evaluations and
    names, fold by fold."""
    names = list(candidates)
    by_fold = {n: {f["fold"]: f for f in candidates[n]} for n in names}
    chosen, picks = [], []
    for k in sorted(set.intersection(*(set(folds) for folds in by_fold.values()))):
        best = max(names, key=lambda n: (by_fold[n][k]["val_auroc"], -names.index(n)))
        chosen.append(by_fold[best][k])
        picks.append(best)
    return chosen, picks


def _spread(auc: list[float], seconds: list[float]) -> tuple[float, float, float]:
    """Fold mean and standard deviation of AUROC, and minutes per fold."""
    std = statistics.stdev(auc) if len(auc) > 1 else 0.0
    return statistics.mean(auc), std, statistics.mean(seconds) / 60


def _summary_row(name: str, folds: list[dict], note: str = "") -> str:
    from tbclf.evaluation.roc import auroc

    auc = [f["test_auroc"] for f in folds]
    prob = [p for f in folds for p in f["test"]["prob"].tolist()]
    label = [y for f in folds for y in f["test"]["label"].tolist()]
    pos = sum(y == 1 for y in label)
    sens = sum(f["tp"] for f in folds) / pos
    spec = sum(f["tn"] for f in folds) / (len(label) - pos)
    mean, std, minutes = _spread(auc, [f["seconds"] for f in folds])
    return (
        f"| {name} | {mean:.3f} | {std:.3f} | {auroc(prob, label):.3f} | "
        f"{sens:.2f} / {spec:.2f} | {statistics.mean(f['val_auroc'] for f in folds):.3f} | "
        f"{minutes:.1f} | {len(folds)} | {note} |"
    )


def ensemble_table(rows: list[dict], ensembles: list[str], select: list[str]) -> str:
    """Ensembles of runs trained on the same outer folds (every member never saw the fold's
    test images), and a recipe chosen per fold on its validation part (nested), each scored
    on the untouched outer test folds."""
    groups: dict[str, dict[int, dict]] = {}
    for row in rows:
        if not row.get("predictions") or "val_prob" not in row["predictions"]:
            continue
        label = f"{variant_name(row['variant'], row.get('tag', ''))}:{row['preprocessing']}"
        groups.setdefault(label, {})[row["fold"]] = fold_scores(row)
        if "val_prob_tta" in row["predictions"]:
            groups.setdefault(label + "+tta", {})[row["fold"]] = fold_scores(row, "_tta")
    evaluated: dict[str, list[dict]] = {}

    def runs(name: str) -> list[dict]:
        if name not in evaluated:
            parts = name.split(",")
            missing = [p for p in parts if p not in groups]
            if missing:
                raise SystemExit(f"{name}: no finished runs with validation predictions for "
                                 f"{missing}; have {sorted(groups)}")  # fmt: skip
            folds = sorted(set.intersection(*(set(groups[p]) for p in parts)))
            evaluated[name] = [evaluate(combine([groups[p][k] for p in parts])) for k in folds]
        return evaluated[name]

    lines = [
        "| runs (ensembles joined by ,) | test AUROC mean | std | pooled AUROC "
        "| pooled sens. / spec. | val AUROC mean | min/fold | folds | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in [*dict.fromkeys([*select, *ensembles])]:
        lines.append(_summary_row(name, runs(name)))
    if select:
        chosen, picks = select_on_validation({n: runs(n) for n in select})
        counts = ", ".join(f"{n} x{picks.count(n)}" for n in dict.fromkeys(picks))
        lines.append(_summary_row("chosen per fold on validation", chosen, counts))
    return "\n".join(lines)


def _row(name: str, prep: str, group: list[dict], prefix: str, pooled: str, point: str) -> str:
    auc = [r[f"{prefix}_auroc"] for r in group]
    sens = statistics.mean(r[f"{prefix}_sensitivity"] for r in group)
    spec = statistics.mean(r[f"{prefix}_specificity"] for r in group)
    mean, std, minutes = _spread(auc, [r["seconds"] for r in group])
    return (
        f"| {name} | {prep} | {mean:.3f} | {std:.3f} | "
        f"{min(auc):.3f}-{max(auc):.3f} | {pooled} | {sens:.2f} / {spec:.2f} | {point} | "
        f"{minutes:.1f} | {len(group)} |"
    )


def table(rows: list[dict]) -> str:
    """Per variant: fold AUROC mean and spread, pooled AUROC, sens./spec. at the chosen point
    (fold mean and pooled), minutes per fold; a row per test-time lever; pooled AUROC per
    source; calibration before and after temperature scaling."""
    from tbclf.evaluation.roc import auroc

    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        name = variant_name(row["variant"], row.get("tag", ""))
        groups.setdefault((name, row["preprocessing"]), []).append(row)
    lines = [
        "| model | preprocessing | test AUROC mean | std | min-max | pooled AUROC "
        "| sens. / spec. mean | pooled sens. / spec. | min/fold | folds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_source: dict[tuple[str, str], dict[str, str]] = {}
    calibration = []
    for (variant, prep), group in groups.items():
        pooled = point = ""
        levers = {}
        if all(r.get("predictions") for r in group):
            probs = [p for r in group for p in r["predictions"]["prob"]]
            labels = [y for r in group for y in r["predictions"]["label"]]
            sources = [s for r in group for s in r["predictions"]["source"]]
            pooled = f"{auroc(probs, labels):.3f}"
            point = "{:.2f} / {:.2f}".format(*pooled_point(group))
            by_source[(variant, prep)] = {
                source: f"{auroc(*subset(probs, labels, sources, source)):.3f}"
                for source in sorted(set(sources))
            }
            levers = lever_rows(group)
        lines.append(_row(variant, prep, group, "test", pooled, point))
        for lever, values in levers.items():
            name = f"{variant} + {lever}"
            pooled = f"{auroc(values['prob'], values['label']):.3f}"
            point = "{:.2f} / {:.2f}".format(*pooled_point(group, values["prefix"]))
            lines.append(_row(name, prep, group, values["prefix"], pooled, point))
            by_source[(name, prep)] = {
                source: f"{auroc(*subset(values['prob'], values['label'], values['source'], source)):.3f}"  # noqa: E501
                for source in sorted(set(values["source"]))
            }
        if all("score_brier" in r for r in group):
            mean = {k: statistics.mean(r[f"score_{k}"] for r in group)
                    for k in ("temperature", "brier", "brier_cal", "ece", "ece_cal", "nll",
                              "nll_cal")}  # fmt: skip
            lowered = sum(r["score_nll_cal"] < r["score_nll"] for r in group)
            calibration.append(
                f"| {variant} | {prep} | {mean['temperature']:.2f} | {mean['brier']:.3f} -> "
                f"{mean['brier_cal']:.3f} | {mean['ece']:.3f} -> {mean['ece_cal']:.3f} | "
                f"{mean['nll']:.3f} -> {mean['nll_cal']:.3f} | {lowered}/{len(group)} |"
            )
    if by_source:
        sources = sorted({s for v in by_source.values() for s in v})
        lines += [
            "",
            "| model | preprocessing | " + " | ".join(sources) + " |",
            "|---|---|" + "---|" * len(sources),
        ]
        for (variant, prep), values in by_source.items():
            cells = " | ".join(values.get(s, "") for s in sources)
            lines.append(f"| {variant} | {prep} | {cells} |")
    if calibration:
        lines += [
            "",
            "Temperature scaling fitted on each fold's validation part, scored on its test part "
            "(fold means):",
            "",
            "| model | preprocessing | temperature | Brier before -> after | ECE before -> after "
            "| NLL before -> after | folds with lower NLL |",
            "|---|---|---|---|---|---|---|",
            *calibration,
        ]
    return "\n".join(lines)


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark that trains models shares (defaults: the configs')."""
    parser.add_argument("--data", required=True, help="labelled data root")
    parser.add_argument("--out", required=True, help="folder for per-run results")
    parser.add_argument("--cache", default=".cache/tbclf")
    parser.add_argument("--epochs", type=int, help="max epochs (default: the config's)")
    parser.add_argument("--patience", type=int, help="early stopping (default: the config's)")
    parser.add_argument("--image-size", type=int, help="default: the config's")
    parser.add_argument("--batch-size", type=int, help="default: the config's")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per job")
    parser.add_argument("--seed", type=int, default=42, help="fixes the folds and splits")
    parser.add_argument(
        "--model-seed",
        type=int,
        default=None,
        help="seed of the weights' init and dropout (default: --seed); a seed ensemble's "
        "members differ only in it",
    )
    parser.add_argument(
        "--ema", type=float, default=None, help="EMA weight averaging with this decay per step"
    )
    parser.add_argument(
        "--swa",
        type=lambda v: float(v) if "." in v else int(v),
        default=None,
        metavar="START",
        help="equal-weight (SWA) averaging of each epoch's weights from this epoch index, or "
        "fraction of max epochs (0.5)",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="model option overrides (YAML values), e.g. unfreeze_from=2 lr=3e-4",
    )
    parser.add_argument("--tag", default="", help="name for a --set variant (shown as MODEL+TAG)")
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="only tabulate the runs already finished under --out",
    )


def parse_setting(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set {item!r}: write KEY=VALUE, e.g. unfreeze_from=2")
    return key, yaml.safe_load(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser)
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_RUNS,
        help="model:preprocessing pairs, models: " + ", ".join(VARIANTS),
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=1, help="variants run in parallel")
    parser.add_argument(
        "--ensemble",
        nargs="+",
        default=[],
        metavar="RUN,RUN",
        help="with --table-only: ensembles of finished runs trained on the same folds, e.g. "
        "mobilenet_ft:clahe,mobilenet_ft+s7:clahe (add +tta to a run for its TTA scores)",
    )
    parser.add_argument(
        "--select",
        nargs="+",
        default=[],
        metavar="RUN",
        help="with --table-only: candidates (runs or ensembles) for a recipe chosen per fold "
        "on validation AUROC, scored on the outer test folds",
    )
    args = parser.parse_args()
    args.set = dict(parse_setting(item) for item in args.set)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.table_only:
        done = sorted(Path(args.out).glob("*/fold*/result.json"))
        rows = with_predictions([json.loads(path.read_text()) for path in done], args.out)
        text = table(rows)
        if args.ensemble or args.select:
            text += "\n\n" + ensemble_table(rows, args.ensemble, args.select)
        print(text)
        return
    start = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_variant, args.variants, [args] * len(args.variants)))
    else:
        results = [run_variant(spec, args) for spec in args.variants]
    rows = with_predictions([row for group in results for row in group], args.out)
    text = table(rows)
    print(text)
    print(f"\n{len(rows)} folds in {time.perf_counter() - start:.0f} s")
    atomic_write_text(Path(args.out) / "table.md", text + "\n")
    rows = [{k: v for k, v in row.items() if k != "predictions"} for row in rows]
    atomic_write_text(Path(args.out) / "rows.json", json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
