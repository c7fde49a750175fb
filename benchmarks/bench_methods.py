"""Mitigation benchmark (issue 10): every method on planted-bias data with one fixed backbone, and the probe grid.

One planted-bias dataset (``fairfm datasets synth``: the target group F is under-represented and its lesions are
smaller and fainter — ``under_representation`` + ``appearance_shift``), one fixed backbone (a random-weight
ResNet-50, ``resnet50_scratch``, features extracted once and cached), the linear probe with its default
hyper-parameters, and every registered method that serves the linear probe, each over ``--seeds`` seeds, run
through ``fairfm.runner`` exactly as ``fairfm run`` does (bootstrap B = 1000 per run). Reported per method: test AUC,
worst-group AUC and the AUC gap over sex with their 95% intervals (seed 0's run), their mean over seeds, the paired
bootstrap difference of the AUC gap to ERM on the same test samples (seed 0), and the wall time of a run relative to
ERM's. Then the probe grid: 10 methods × 5 seeds of probing against the one feature extraction.

    python benchmarks/bench_methods.py [--n 1500] [--seeds 5] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, write_section  # noqa: E402


def paired_gap_difference(erm, other, *, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high) of AUC gap(other) − AUC gap(ERM) on the same test rows, from stratified-by-group paired
    resamples (the same resampled indices for both runs; sklearn AUCs)."""
    from sklearn.metrics import roc_auc_score

    def gap(y, p, g, index):
        aucs = [roc_auc_score(y[index][g[index] == k], p[index][g[index] == k]) for k in np.unique(g)]
        return max(aucs) - min(aucs)

    y, g = erm["y_true"].to_numpy(), erm["group_sex"].astype(str).to_numpy()
    a, b = erm["y_score"].to_numpy(), other["y_score"].to_numpy()
    full = np.arange(y.size)
    point = gap(y, b, g, full) - gap(y, a, g, full)
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(g == k) for k in np.unique(g)]
    diffs = []
    for _ in range(resamples):
        index = np.concatenate([rng.choice(s, s.size, replace=True) for s in strata])
        try:
            diffs.append(gap(y, b, g, index) - gap(y, a, g, index))
        except ValueError:  # a resample with one class in a group: no AUC
            continue
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(point), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1500, help="images in the planted-bias dataset")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (the model resizes to 224)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file")
    args = parser.parse_args()

    from fairfm import runner
    from fairfm.data.synth import generate
    from fairfm.mitigate.base import get_method_class, list_methods
    from fairfm.results import Store
    from fairfm.spec import RunSpec

    load_before = os.getloadavg()
    started = time.perf_counter()
    methods = [name for name in list_methods() if "features" in get_method_class(name).needs.loops]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synth"
        generate(data, n=args.n, size=args.size, mechanisms=["under_representation", "appearance_shift"], seed=0)
        store = Store(Path(tmp) / "store")

        def run(method: str | None, seed: int):
            spec = RunSpec.from_dict({"dataset": str(data), "model": "resnet50_scratch", "usage": "linear_probe",
                                      "attributes": ["sex"], "method": method, "seed": seed, "bootstrap": 1000,
                                      "device": "cpu"})  # fmt: skip
            start = time.perf_counter()
            result = runner.execute(spec, store, progress=False)
            return result.record, time.perf_counter() - start

        warm_up, _ = run(None, 10_000)  # extracts and caches the features; imports and first calls paid here
        extraction = float(warm_up.meta["timings"]["features_s"])
        rows: dict[str | None, dict] = {}
        for method in [None, *methods]:
            records, walls = [], []
            for seed in range(args.seeds):
                record, wall = run(method, seed)
                records.append(record)
                walls.append(wall)
            rows[method] = {"records": records, "wall": statistics.mean(walls)}
            print(f"{method or 'ERM'}: {statistics.mean(walls):.2f} s per run", file=sys.stderr)

        def value(record, metric: str, attribute: str) -> tuple[float, float, float]:
            m = record.metrics
            row = m[(m["metric"] == metric) & (m["attribute"] == attribute)].iloc[0]
            return float(row["value"]), float(row["ci_low"]), float(row["ci_high"])

        erm_test = rows[None]["records"][0].predictions
        erm_test = erm_test[erm_test["split"] == "test"].reset_index(drop=True)
        lines = []
        for method, row in rows.items():
            record = row["records"][0]
            auc, worst, gap = (value(record, "auc", "__all__"), value(record, "worst_auc", "sex"),
                               value(record, "auc_gap", "sex"))  # fmt: skip
            mean_gap = statistics.mean(value(r, "auc_gap", "sex")[0] for r in row["records"])
            mean_auc = statistics.mean(value(r, "auc", "__all__")[0] for r in row["records"])
            if method is None:
                paired = "—"
            else:
                test = record.predictions
                test = test[test["split"] == "test"].reset_index(drop=True)
                assert (test["sample_id"].to_numpy() == erm_test["sample_id"].to_numpy()).all()
                d, lo, hi = paired_gap_difference(erm_test, test)
                paired = f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            aware = "yes" if (method and get_method_class(method)(
                get_method_class(method).params_model()).uses_attribute_at_test()) else "–"  # fmt: skip
            lines.append(f"| {method or 'ERM'} | {aware} | {auc[0]:.3f} [{auc[1]:.3f}, {auc[2]:.3f}] | "
                         f"{worst[0]:.3f} [{worst[1]:.3f}, {worst[2]:.3f}] | {gap[0]:.3f} [{gap[1]:.3f}, {gap[2]:.3f}] "
                         f"| {mean_auc:.3f} / {mean_gap:.3f} | {paired} | {row['wall'] / rows[None]['wall']:.2f} |")
        grid_methods = [None, *methods][:10]
        grid = sum(rows[m]["wall"] * args.seeds for m in grid_methods)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    body = "\n".join([
        "## Mitigation methods on planted bias (issue 10)",
        "",
        f"`python benchmarks/bench_methods.py` — `fairfm datasets synth` with n = {args.n} images of {args.size} px, "
        "target group F under-represented (20%) with smaller, fainter lesions; attribute sex; one fixed backbone "
        "(random-weight ResNet-50, `resnet50_scratch`, 224 px, features extracted once and cached); the linear "
        "probe with its default hyper-parameters; every method with its default parameters; B = 1000 bootstrap "
        f"resamples per run; {args.seeds} seeds. Measured in one run ({elapsed / 60:.1f} min) on: "
        f"{describe(('numpy', 'torch', 'scikit-learn', 'fairlearn'))}. Load average (1 min) {load_before[0]:.1f} at the "
        f"start, {load_after[0]:.1f} at the end.",
        "",
        "Intervals: 95%, from the run's own bootstrap (seed 0's run). *mean over seeds*: AUC / AUC gap averaged over "
        "the seeds. *Δ gap vs ERM*: AUC gap of the method − ERM's on the same test samples (seed 0), with a paired "
        "stratified percentile interval (1000 resamples); negative = fairer. *time*: wall time of a run relative to "
        "ERM's probe run (feature loading, training, bootstrap, writing; the extraction and the process's first run "
        "excluded: a warm-up run extracts the features).",
        "",
        "| method | attribute at test | AUC | worst-group AUC | AUC gap (sex) | mean over seeds: AUC / gap | Δ gap vs "
        "ERM | time |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *lines,
        "",
        f"Probe grid: {len(grid_methods)} methods (ERM and the first {len(grid_methods) - 1} above) × {args.seeds} "
        "seeds of linear probing on the "
        f"cached features took {grid:.1f} s against {extraction:.1f} s for the one feature extraction: "
        f"(extraction + grid) / extraction = **{(extraction + grid) / extraction:.2f}×** (goal ≤ 1.2×).",
    ])
    print(body)
    if args.write is not None:
        write_section(args.write, "bench-methods", body)


if __name__ == "__main__":
    main()
