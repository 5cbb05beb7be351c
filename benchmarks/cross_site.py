"""Cross-site honesty: how much accuracy a model loses on an image source it never saw.

Two protocols, for each model (configs as shipped, the same training as
`cross_validation.py`):

- **leave one source out**: train (and pick the threshold) on all sources but one, test on
  the held-out one (``data.test_sources``);
- **one source only**: train on a single source, test on all the others
  (``data.train_sources`` + ``data.test_sources``), the small-to-large case.

Sensitivity and specificity are at the threshold chosen on the training sources' validation
part for 90% sensitivity, i.e. the threshold as it transfers to the new site.

    python benchmarks/cross_site.py --data ../shared/data/tb-cxr-dev --out /tmp/xsite
    python benchmarks/cross_site.py ... --models mobilenet_ft --protocols loso

A finished run is not trained again; `--table-only` tabulates what is under --out.

How many labelled images of the new site `tbclf rethreshold` needs: `--rethreshold 5 10 20`
re-picks each leave-one-source-out model's threshold on that many images per class drawn
from its held-out site (many random draws) and scores the rest of the site at it.

    python benchmarks/cross_site.py --data ... --out /tmp/xsite --table-only --rethreshold 5 10 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cross_validation import VARIANTS, add_training_args, parse_setting, train_and_score

from tbclf.io import atomic_write_text

PROTOCOLS = ("loso", "single")


def sources_of(root: str) -> list[str]:
    from tbclf.data import layouts

    return sorted({r.source for r in layouts.discover(Path(root))})


def cases(protocol: str, sources: list[str]) -> list[tuple[str, dict]]:
    """(name, data options) of each run of a protocol."""
    if protocol == "loso":
        return [(f"loso-{s}", {"test_sources": [s]}) for s in sources]
    return [
        (f"single-{s}", {"train_sources": [s], "test_sources": [o for o in sources if o != s]})
        for s in sources
    ]


def run_dir(out: str, variant: str, preprocessing: str, case: str) -> Path:
    return Path(out) / f"{variant}-{preprocessing}" / case


def run_all(args: argparse.Namespace) -> list[dict]:
    rows = []
    sources = sources_of(args.data)
    for variant in args.models:
        for protocol in args.protocols:
            for case, split in cases(protocol, sources):
                out = run_dir(args.out, variant, args.preprocessing, case)
                done = out / "result.json"
                if done.exists():
                    rows.append(json.loads(done.read_text()))
                    continue
                extra = {"protocol": protocol, "case": case, **split}
                row = train_and_score(variant, args.preprocessing, args, split, out, extra)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def finished(out: str) -> list[dict]:
    rows = []
    for path in sorted(Path(out).glob("*/*/result.json")):
        row = json.loads(path.read_text())
        if "protocol" in row:
            rows.append(row)
    return rows


def with_predictions(rows: list[dict], out: str) -> list[dict]:
    for row in rows:
        path = run_dir(out, row["variant"], row["preprocessing"], row["case"])
        row["predictions"] = json.loads((path / "test_predictions.json").read_text())
    return rows


def _auroc_cell(probs: list, labels: list) -> str:
    import numpy as np

    from tbclf.evaluation.intervals import auroc_ci

    labels_arr = np.asarray(labels)
    if len(set(labels)) < 2:
        return "n/a (one class)"
    ci = auroc_ci(np.asarray(probs), labels_arr)
    return f"{ci['value']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"


def table(rows: list[dict]) -> str:
    """One line per run: train / test sources, sizes, test AUROC (DeLong 95% CI), sens./spec.
    at the transferred threshold, the in-distribution validation AUROC beside it, minutes; for
    one-source runs, the AUROC on each other source too."""
    lines = [
        "| model | protocol | trained on | tested on | train / test images | val AUROC (seen "
        "sources) | test AUROC [95% CI] | sens. / spec. at the transferred threshold | min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    per_source = []
    for r in sorted(rows, key=lambda r: (r["variant"], r["protocol"], r["case"])):
        pred = r["predictions"]
        tested = ", ".join(r["test_sources"])
        trained = ", ".join(r.get("train_sources") or ["all others"])
        lines.append(
            f"| {r['variant']} | {r['protocol']} | {trained} | {tested} | "
            f"{r['n_train']} / {r['n_test']} | {r['best_val_auroc']:.3f} | "
            f"{_auroc_cell(pred['prob'], pred['label'])} | "
            f"{r['test_sensitivity']:.2f} / {r['test_specificity']:.2f} | "
            f"{r['seconds'] / 60:.1f} |"
        )
        if r["protocol"] == "single":
            cells = []
            for source in r["test_sources"]:
                keep = [i for i, s in enumerate(pred["source"]) if s == source]
                probs = [pred["prob"][i] for i in keep]
                labels = [pred["label"][i] for i in keep]
                cells.append(f"{source} {_auroc_cell(probs, labels)}")
            per_source.append(f"| {r['variant']} | {trained} | " + "; ".join(cells) + " |")
    if per_source:
        lines += [
            "",
            "| model | trained on | test AUROC per unseen source [95% CI] |",
            "|---|---|---|",
            *per_source,
        ]
    return "\n".join(lines)


def rethreshold_draws(
    probs: list, labels: list, per_class: int, draws: int, seed: int = 0, target: float = 0.9
) -> dict[str, float] | None:
    """`draws` times: pick the `target`-sensitivity threshold as `tbclf rethreshold` does on
    `per_class` random images of each class, then score the site's other images at it.
    None when the site has too few images of a class to leave at least as many to score."""
    import numpy as np

    from tbclf.evaluation.operating_point import choose_operating_point
    from tbclf.evaluation.threshold import sensitivity_specificity

    p, y = np.asarray(probs, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if min(len(pos), len(neg)) < 2 * per_class:
        return None
    rng = np.random.default_rng(seed)
    sens, spec = [], []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(pos, per_class, replace=False),
                               rng.choice(neg, per_class, replace=False)])  # fmt: skip
        rest = np.setdiff1d(np.arange(len(y)), pick)
        point = choose_operating_point(p[pick], y[pick], "sensitivity", target,
                                       source="site validation")  # fmt: skip
        threshold = point.threshold
        se, sp = sensitivity_specificity(p[rest], y[rest], threshold)
        sens.append(se)
        spec.append(sp)
    sens_arr, spec_arr = np.asarray(sens), np.asarray(spec)
    return {
        "sens_median": float(np.median(sens_arr)),
        "sens_p10": float(np.quantile(sens_arr, 0.1)),
        "share_sens_085": float(np.mean(sens_arr >= 0.85)),
        "spec_median": float(np.median(spec_arr)),
        "spec_p10": float(np.quantile(spec_arr, 0.1)),
    }


def rethreshold_table(
    rows: list[dict], sizes: list[int], draws: int = 1000, target: float = 0.9
) -> str:
    """Per leave-one-source-out run and images per class: the `target`-sensitivity threshold
    re-picked on a few of the held-out site's images, scored on the rest of that site."""
    lines = [
        f"| model | new site (TB / healthy) | images per class for the {target:.0%}-sensitivity "
        "threshold | test "
        "sensitivity median (10th percentile) | draws with sensitivity >= 0.85 | test "
        "specificity median (10th percentile) |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["variant"], r["case"])):
        if r["protocol"] != "loso":
            continue
        pred, site = r["predictions"], ", ".join(r["test_sources"])
        n_pos = sum(1 for y in pred["label"] if y == 1)
        counts = f"{site} ({n_pos} / {len(pred['label']) - n_pos})"
        lines.append(
            f"| {r['variant']} | {counts} | none (the transferred threshold) | "
            f"{r['test_sensitivity']:.2f} | | {r['test_specificity']:.2f} |"
        )
        for n in sizes:
            got = rethreshold_draws(pred["prob"], pred["label"], n, draws, target=target)
            if got is None:
                lines.append(f"| {r['variant']} | {counts} | {n} | too few images | | |")
                continue
            lines.append(
                f"| {r['variant']} | {counts} | {n} | {got['sens_median']:.2f} "
                f"({got['sens_p10']:.2f}) | {got['share_sens_085']:.0%} | "
                f"{got['spec_median']:.2f} ({got['spec_p10']:.2f}) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser)
    parser.add_argument("--models", nargs="+", default=["mobilenet_ft", "simple_cnn"],
                        choices=sorted(VARIANTS))  # fmt: skip
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS)
    parser.add_argument("--preprocessing", default="clahe")
    parser.add_argument("--rethreshold", nargs="+", type=int, default=[], metavar="N",
                        help="also tabulate thresholds re-picked on N images per class of "
                        "each held-out site")  # fmt: skip
    parser.add_argument("--rethreshold-target", type=float, default=0.9,
                        help="the sensitivity those thresholds aim for")  # fmt: skip
    args = parser.parse_args()
    args.set = dict(parse_setting(item) for item in args.set)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = finished(args.out) if args.table_only else run_all(args)
    rows = with_predictions(rows, args.out)
    text = table(rows)
    if args.rethreshold:
        text += "\n\n" + rethreshold_table(rows, args.rethreshold, target=args.rethreshold_target)
    print(text)
    if not args.table_only:
        print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s")
        atomic_write_text(Path(args.out) / "table.md", text + "\n")


if __name__ == "__main__":
    main()
