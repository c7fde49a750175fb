"""Coverage and type-I error of gap intervals (issue 9, A.8): percentile versus simultaneous max-|t|.

Binormal scores in three groups (score = N(μ_g·y, 1), AUC_g = Φ(μ_g/√2), prevalence 0.3, p = sigmoid(score − 0.6),
threshold 0.5), true AUC gaps 0, 0.02 and 0.10, groups of 1,500 each and a small-group case (1,500, 1,500, 150).
Each repetition draws a new data set and runs the real ``fairfm.metrics.evaluate`` twice (``ci_method=
"percentile"`` and ``"simultaneous"``, same seed, so the same resamples). Reported per metric: the true value, the
mean plug-in estimate, how often the 95% interval covers the true value, its mean width, and how often the test of
no disparity (``<gap>_p``) is below 0.05 (at a true gap of 0 this is the false-positive rate; nominal 5%).

    python benchmarks/gap_coverage.py [--reps 100] [--resamples 1000] [--write docs/metrics.md]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

import fairfm.metrics as M

PREVALENCE = 0.3
SHIFT = 0.6  # p = sigmoid(score − SHIFT); the fixed threshold 0.5 is score ≥ SHIFT
SETTINGS = {"0": (0.80, 0.80, 0.80), "0.02": (0.79, 0.80, 0.81), "0.10": (0.75, 0.80, 0.85)}
SIZES = {"3 × 1,500": (1500, 1500, 1500), "1,500 / 1,500 / 150": (1500, 1500, 150)}
METRICS = ("auc_gap", "worst_auc", "acc_gap", "tpr_gap", "dpr")
TESTED = ("auc_gap", "acc_gap", "tpr_gap")


def truth(aucs: tuple[float, ...]) -> dict[str, float]:
    mu = np.sqrt(2) * norm.ppf(aucs)
    tpr = 1 - norm.cdf(SHIFT - mu)
    tnr = norm.cdf(SHIFT)
    acc = PREVALENCE * tpr + (1 - PREVALENCE) * tnr
    pos_rate = PREVALENCE * tpr + (1 - PREVALENCE) * (1 - tnr)
    return {"auc_gap": max(aucs) - min(aucs), "worst_auc": min(aucs), "acc_gap": float(np.ptp(acc)),
            "tpr_gap": float(np.ptp(tpr)), "dpr": float(pos_rate.min() / pos_rate.max())}  # fmt: skip


def draw(rng: np.random.Generator, aucs: tuple[float, ...], sizes: tuple[int, ...]):
    mu = np.sqrt(2) * norm.ppf(aucs)
    group = np.repeat(np.arange(len(sizes)), sizes)
    y = (rng.random(group.size) < PREVALENCE).astype(int)
    score = rng.normal(size=group.size) + mu[group] * y
    return y, 1 / (1 + np.exp(-(score - SHIFT))), group


def study(reps: int, resamples: int, seed: int) -> list[dict]:
    rows = []
    for size_name, sizes in SIZES.items():
        for gap_name, aucs in SETTINGS.items():
            true = truth(aucs)
            hits = {m: {"percentile": [], "simultaneous": []} for m in METRICS}
            widths = {m: {"percentile": [], "simultaneous": []} for m in METRICS}
            rejects = {m: {"percentile": [], "simultaneous": []} for m in TESTED}
            estimates = {m: [] for m in METRICS}
            for r in range(reps):
                rng = np.random.default_rng([seed, r, len(sizes), int(round(1000 * true["auc_gap"]))])
                y, p, group = draw(rng, aucs, sizes)
                for method in ("percentile", "simultaneous"):
                    report = M.evaluate(y, p, groups={"g": group}, threshold=0.5, bootstrap=resamples, seed=r,
                                        ci_method=method, n_jobs=1)  # fmt: skip
                    attr = report.tasks["task"].attributes["g"]
                    for m in METRICS:
                        est = attr.summary[m]
                        if method == "percentile":
                            estimates[m].append(est.value)
                        hits[m][method].append(est.ci_low <= true[m] <= est.ci_high)
                        widths[m][method].append(est.ci_high - est.ci_low)
                    for m in TESTED:
                        rejects[m][method].append(attr.significance[f"{m}_p"] < 0.05)
            for m in METRICS:
                for method in ("percentile", "simultaneous"):
                    rows.append({
                        "sizes": size_name, "true_auc_gap": gap_name, "metric": m, "true": true[m],
                        "mean_estimate": float(np.mean(estimates[m])), "method": method,
                        "coverage": float(np.mean(hits[m][method])), "width": float(np.mean(widths[m][method])),
                        "rejection": float(np.mean(rejects[m][method])) if m in TESTED else None,
                    })  # fmt: skip
    return rows


def markdown(rows: list[dict], reps: int, resamples: int, seed: int, seconds: float) -> str:
    lines = [
        f"R = {reps} repetitions per setting, B = {resamples} resamples, stratified by group, 95% intervals, "
        f"seed {seed} (`python benchmarks/gap_coverage.py --reps {reps} --resamples {resamples} --seed {seed}`, "
        f"{seconds / 60:.0f} min on one core). Binormal scores, prevalence {PREVALENCE}, group AUCs "
        + ", ".join(f"{'/'.join(f'{a:.2f}' for a in aucs)} for a true AUC gap of {name}" for name, aucs in SETTINGS.items())
        + f"; `acc_gap`/`tpr_gap`/`dpr` at the fixed threshold 0.5 (p = sigmoid(score − {SHIFT})). "
        "Coverage: share of intervals containing the true value; rejected: share of `<gap>_p` < 0.05 "
        "(at a true gap of 0, the false-positive rate; nominal 5%).",
        "",
        "| groups | true AUC gap | metric | true value | mean estimate | percentile: coverage | width | rejected "
        "| simultaneous: coverage | width | rejected |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    keyed = {(r["sizes"], r["true_auc_gap"], r["metric"], r["method"]): r for r in rows}
    for size_name in SIZES:
        for gap_name in SETTINGS:
            for m in METRICS:
                pct, sim = keyed[size_name, gap_name, m, "percentile"], keyed[size_name, gap_name, m, "simultaneous"]
                reject = lambda r: "–" if r["rejection"] is None else f"{r['rejection']:.0%}"  # noqa: E731
                lines.append(
                    f"| {size_name} | {gap_name} | `{m}` | {pct['true']:.4f} | {pct['mean_estimate']:.4f} "
                    f"| {pct['coverage']:.0%} | {pct['width']:.3f} | {reject(pct)} "
                    f"| {sim['coverage']:.0%} | {sim['width']:.3f} | {reject(sim)} |"
                )  # fmt: skip
    return "\n".join(lines) + "\n"


def write_section(path: Path, body: str) -> None:
    """Replace the text between the coverage markers of ``path`` with ``body``."""
    begin, end = "<!-- gap-coverage:begin -->", "<!-- gap-coverage:end -->"
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: no {begin} … {end} markers to write the table between")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body}{end}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--write", type=Path, default=None, help="Markdown file with gap-coverage markers.")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = study(args.reps, args.resamples, args.seed)
    text = markdown(rows, args.reps, args.resamples, args.seed, time.perf_counter() - start)
    print(text)
    if args.write is not None:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
