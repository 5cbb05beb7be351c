"""`tbclf cv`: k-fold cross-validation with the real CLI. Each fold is a `fit` in its own run
folder (`runs/<group>/fold<i>/version_N`) tested once on its held-out fold; the out-of-fold
predictions are pooled into one honest estimate (every image scored only by the model that
never saw it), and the k checkpoints are listed in cv.json for `tbclf ensemble --group`.

    python -m tbclf cv --folds 5 --config configs/mobilenet.yaml --data.root DATA_DIR

Every option other than --folds, --group and --overwrite goes to `fit` and `test` unchanged.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tbclf.engine.rundir import find_checkpoint, run_dir_of
from tbclf.errors import ConfigError
from tbclf.evaluation.intervals import auroc_ci
from tbclf.evaluation.roc import auroc
from tbclf.io import atomic_write_json, check_can_write, read_output_csv, write_csv

OUTPUTS = ("cv.json", "oof_predictions.csv")


def _option(argv: list[str], name: str) -> str | None:
    """The value of `--name V` / `--name=V` in argv (the last one wins, as in jsonargparse)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _run(args: list[str]) -> None:
    print("+ tbclf " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "tbclf", *args], check=False)
    if done.returncode != 0:
        raise ConfigError(f"`tbclf {args[0]}` failed (exit {done.returncode}); see above.")


def _latest_report(run_dir: Path) -> Path:
    reports = sorted(
        run_dir.glob("test-*/report/predictions.csv"), key=lambda p: p.stat().st_mtime_ns
    )
    if not reports:
        raise ConfigError(f"{run_dir}: the test stage wrote no report/predictions.csv")
    return reports[-1]


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="tbclf cv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folds", type=int, default=5, help="k (default 5)")
    parser.add_argument("--group", default=None,
                        help="run group folder under the logger's save_dir (default: "
                        "<logger name>_cv<k>)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier cv.json")
    args, fit_args = parser.parse_known_args(argv)
    if args.folds < 2:
        raise ConfigError(f"--folds {args.folds}: cross-validation needs at least 2 folds.")
    if _option(fit_args, "--data.num_folds") or _option(fit_args, "--data.fold"):
        raise ConfigError("tbclf cv sets data.num_folds and data.fold itself; drop them.")
    save_dir = _option(fit_args, "--trainer.logger.init_args.save_dir") or "runs"
    name = _option(fit_args, "--trainer.logger.init_args.name") or _config_run_name(fit_args)
    group = args.group or f"{name}_cv{args.folds}"
    out = check_can_write(Path(save_dir) / group, OUTPUTS, args.overwrite)

    folds: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    for fold in range(args.folds):
        common = [*fit_args, "--data.num_folds", str(args.folds), "--data.fold", str(fold)]
        where = ["--trainer.logger.init_args.save_dir", save_dir,
                 "--trainer.logger.init_args.name", f"{group}/fold{fold}"]  # fmt: skip
        _run(["fit", *common, *where])
        ckpt = find_checkpoint(save_dir, f"{group}/fold{fold}", "best").resolve()
        _run(["test", *common, "--ckpt_path", str(ckpt)])
        run_dir = run_dir_of(ckpt)
        _, preds = read_output_csv(_latest_report(run_dir))
        probs = np.array([float(r["LABEL"]) for r in preds])
        labels = np.array([int(r["TRUE_LABEL"]) for r in preds])
        decisions = np.array([int(r["DECISION"]) for r in preds])
        folds.append({
            "fold": fold,
            "checkpoint": str(ckpt),
            "run": str(run_dir),
            "n_test": int(labels.size),
            "test_auroc": auroc(probs.tolist(), labels.tolist()),
            "tp": int(((decisions == 1) & (labels == 1)).sum()),
            "tn": int(((decisions == 0) & (labels == 0)).sum()),
            "n_tb": int((labels == 1).sum()),
            "n_healthy": int((labels == 0).sum()),
        })  # fmt: skip
        rows += [[r["ID"], r.get("SOURCE", ""), fold, r["LABEL"], r["DECISION"], r["TRUE_LABEL"]]
                 for r in preds]  # fmt: skip
    summary = pooled_summary(folds, rows)
    write_csv(out / "oof_predictions.csv",
              ["ID", "SOURCE", "FOLD", "LABEL", "DECISION", "TRUE_LABEL"], rows)  # fmt: skip
    atomic_write_json(out / "cv.json", summary)
    print(
        f"{args.folds}-fold CV: test AUROC {summary['auroc_mean']:.3f} ± {summary['auroc_std']:.3f}"
        f", pooled {summary['pooled_auroc']['value']:.3f} "
        f"[{summary['pooled_auroc']['ci_low']:.3f}, {summary['pooled_auroc']['ci_high']:.3f}]; "
        f"sensitivity {summary['pooled_sensitivity']:.3f}, specificity "
        f"{summary['pooled_specificity']:.3f} at each fold's threshold -> {out / 'cv.json'}\n"
        f"Ensemble the fold models on new images with: python -m tbclf ensemble --group {out} "
        "--predict_root IMAGES --out OUT"
    )
    return summary


def pooled_summary(folds: list[dict[str, Any]], rows: list[list[Any]]) -> dict[str, Any]:
    """Fold mean/std and the pooled out-of-fold figures (each fold at its own threshold)."""
    aurocs = [f["test_auroc"] for f in folds]
    probs = np.array([float(r[3]) for r in rows])
    labels = np.array([int(r[5]) for r in rows])
    return {
        "folds": folds,
        "auroc_mean": statistics.mean(aurocs),
        "auroc_std": statistics.stdev(aurocs) if len(aurocs) > 1 else 0.0,
        "pooled_auroc": auroc_ci(probs, labels),
        "pooled_sensitivity": sum(f["tp"] for f in folds) / max(1, sum(f["n_tb"] for f in folds)),
        "pooled_specificity": sum(f["tn"] for f in folds)
        / max(1, sum(f["n_healthy"] for f in folds)),
        "estimate": "out-of-fold: every image scored once, by the fold model that never saw it",
        "members": [f["checkpoint"] for f in folds],
    }


def _config_run_name(fit_args: list[str]) -> str:
    """The logger name in the --config file (what `fit` would name the run)."""
    import yaml

    config = _option(fit_args, "--config") or _option(fit_args, "-c")
    if config is None:
        return "tbclf"
    try:
        doc = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"--config {config}: cannot be read ({error}).") from None
    logger = (doc.get("trainer") or {}).get("logger") or {}
    init = logger.get("init_args") if isinstance(logger, dict) else None
    return str((init or {}).get("name") or "tbclf")
