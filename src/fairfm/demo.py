"""``fairfm demo``: the whole pipeline on data and models that need no download.

Planted-bias synthetic radiographs (:mod:`fairfm.data.synth`, the disparity known from ``truth.json``) → two tiny
CLIP models of real architectures (a ViT image tower and CLIP's modified-ResNet image tower, each with a text
transformer) with **random weights**, saved in open_clip's checkpoint layout → zero-shot, linear probe (and LoRA on
the ViT), and the linear probe with two mitigation methods (reweighting; group thresholds, which reads the attribute
at test time) through the same runner as ``fairfm run`` → the results store → one comparison table of AUC and the AUC
gap with bootstrap intervals, saying whether the planted disparity was detected → the embedding analysis of each
model's features and the HTML report of every run (``OUT/report.html``).

Random weights mean the numbers describe this toy set-up only, not any pretrained model; the point is that every
step a real study runs (spec, cached features, training, validation threshold, bootstrap, store) runs here too.
Each spec is also written as YAML, so ``fairfm run DEMO/specs/<name>.yaml --store DEMO/store`` finds the same run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The two tiny models: (registered card, label, open_clip model configuration).
_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
DEMO_MODELS = (
    ("clip", "CLIP-ViT†",
     {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
      "text_cfg": _TEXT}, ("zero_shot", "linear_probe", "lora")),
    ("clip_rn50", "CLIP-ResNet†",
     {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16}, "text_cfg": _TEXT},
     ("zero_shot", "linear_probe")),
)  # fmt: skip
#: Linear-probe settings for the demo (AdamW: the SGD default at lr 2.5e-4 barely moves in a few epochs).
DEMO_PROBE = {"optimizer": "adamw", "lr": 1e-3, "min_lr": 1e-5, "epochs": 60, "batch_size": 64, "warmup_epochs": 2,
              "early_stopping_patience": 10}  # fmt: skip
#: LoRA on the ViT's attention (peft), a few epochs: enough to show the usage end to end on 2 cores.
DEMO_LORA = {"optimizer": "adamw", "lr": 1e-3, "epochs": 4, "batch_size": 64, "warmup_epochs": 0}
DEMO_HPARAMS = {"zero_shot": {}, "linear_probe": DEMO_PROBE, "lora": DEMO_LORA}
#: Mitigation methods run on each model's linear probe (cached features: seconds each): one that trains on the
#: attribute (reweighting) and one that reads it at test time (group thresholds, fairlearn's post-processing).
DEMO_METHODS = ("reweighting", "group_thresholds")
#: A disparity is "detected" when its paired bootstrap test gives p below this.
DETECTION_ALPHA = 0.05


@dataclass
class DemoRow:
    model: str
    label: str
    usage: str
    method: str | None
    run_id: str
    computed: bool
    auc: Any  # Estimate
    groups: dict[str, Any]  # group -> Estimate of AUC
    gap: Any  # Estimate of the AUC gap
    worst: str | None
    p_value: float  # share of paired bootstrap resamples in which the best-minus-worst AUC difference is ≤ 0
    detected: bool


def save_tiny_clip(folder: Path, config: dict[str, Any], *, seed: int) -> Path:
    """A random-weight CLIP in open_clip's ``local-dir`` layout (config + weights), written once."""
    import open_clip
    import torch

    from fairfm.tableio import atomic_path, write_text_atomic

    weights = folder / "open_clip_pytorch_model.bin"
    if weights.is_file() and (folder / "open_clip_config.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config).eval()
    write_text_atomic(folder / "open_clip_config.json", json.dumps({
        "model_cfg": config,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
        "note": "fairfm demo: random weights, not a pretrained model",
    }, indent=2))  # fmt: skip
    with atomic_path(weights) as tmp:
        torch.save(model.state_dict(), tmp)
    return folder


def planted_description(truth: dict[str, Any]) -> str:
    """One sentence naming the planted disparity from ``truth.json``."""
    attribute, target, reference = truth["attribute"], truth["target_group"], truth["reference_group"]
    params = truth.get("parameters", {})
    parts = []
    for mechanism in truth.get("mechanisms", []):
        p = params.get(mechanism, {})
        if mechanism == "label_noise":
            parts.append(f"{p.get('flip_rate', 0):.0%} of {target}'s positives labelled negative (under-diagnosis)")
        elif mechanism == "prevalence_shift":
            parts.append(f"prevalence {p.get('target_prevalence')} in {target} vs "
                         f"{params.get('base', {}).get('prevalence')} in {reference}")  # fmt: skip
        elif mechanism == "under_representation":
            parts.append(f"{target} only {p.get('target_fraction', 0):.0%} of patients")
        elif mechanism == "acquisition_shift":
            parts.append(f"{target}'s images have lower contrast, more noise and a corner marker")
        elif mechanism == "appearance_shift":
            parts.append(f"{target}'s lesions are smaller and fainter")
    return (f"{attribute}: group {target} disadvantaged relative to {reference} — " + "; ".join(parts)
            + f" → expected: lower AUC for {target}")


def run_demo(out: str | Path = "demo_out", *, n: int = 2000, size: int = 64, seed: int = 0, bootstrap: int = 1000,
             progress: bool = True, console: Any = None) -> list[DemoRow]:
    """Run the demo into ``out`` (data, models, specs, store); finished runs are found, not recomputed."""
    from rich.console import Console

    from fairfm.data.synth import generate
    from fairfm.results import Store
    from fairfm.runner import execute
    from fairfm.spec import RunSpec

    console = console or Console(highlight=False)
    out = Path(out)
    data = out / f"synthetic_n{n}_size{size}_seed{seed}"
    if not (data / "dataset.json").is_file() or not (data / "truth.json").is_file():
        console.print(f"generating {n} planted-bias images ({size} px) in {data} …")
        generate(data, n=n, size=size, seed=seed)
    truth = json.loads((data / "truth.json").read_text(encoding="utf-8"))
    store = Store(out / "store")
    rows: list[DemoRow] = []
    attribute, target = truth["attribute"], truth["target_group"]
    for card, label, config, usages in DEMO_MODELS:
        checkpoint = save_tiny_clip(out / "models" / f"tiny_{card}_seed{seed}", config, seed=seed)
        cells = [(usage, None) for usage in usages] + [("linear_probe", m) for m in DEMO_METHODS]
        for usage, method in cells:
            fields = {"dataset": str(data.resolve()), "model": card, "checkpoint": str(checkpoint.resolve()),
                      "usage": usage, "hparams": DEMO_HPARAMS[usage], "method": method,
                      "attributes": [attribute], "seed": seed, "bootstrap": bootstrap}  # fmt: skip
            spec = RunSpec.from_dict(fields, source="demo")
            spec.to_yaml(out / "specs" / f"{card}_{usage}{'_' + method if method else ''}.yaml")
            console.print(f"[bold]{label}[/bold] · {usage}{' · ' + method if method else ''} …")
            result = execute(spec, store, progress=progress, want_report=True)
            task = result.report.tasks[truth["task"]]
            attr = task.attributes[attribute]
            gap = attr.summary.get("auc_gap")
            worst = attr.worst_group.get("auc")
            # Not "the gap's interval excludes 0": a best-minus-worst gap is ≥ 0 in every resample, so its interval
            # almost never contains 0. The test is fairfm's test of no disparity (gap_inference: max-|t|).
            p_value = float(attr.significance.get("auc_gap_p", math.nan))
            detected = bool(worst == target and p_value < DETECTION_ALPHA)
            rows.append(DemoRow(card, label, usage, method, result.record.run_id, result.computed,
                                task.overall.get("auc"),
                                {g: m.get("auc") for g, m in attr.group_metrics.items()}, gap, worst, p_value,
                                detected))  # fmt: skip
    print_comparison(rows, truth, console=console, store=store.path)
    report = write_demo_report(store, rows, out, console=console)
    console.print(f"[bold]report[/bold]: {report} — open it in a browser (self-contained, no network)")
    return rows


def write_demo_report(store: Any, rows: list[DemoRow], out: Path, *, console: Any) -> Path:
    """The embedding analysis of each model's linear-probe features (stored, found on a second demo) and the HTML
    report of the demo's runs, written to ``out/report.html``."""
    from fairfm.analysis.embeddings import run_embeddings
    from fairfm.report.build import ReportOptions, build_report
    from fairfm.report.output import write_report

    records = [store.load(row.run_id) for row in rows]
    for row, record in zip(rows, records):
        if row.usage == "linear_probe" and row.method is None and (record.meta.get("features") or {}).get("key"):
            run_embeddings(store, row.run_id)
    built = build_report(store, records, ReportOptions(title="fairfm demo: planted-bias data, random-weight models"))
    path = write_report(built, out / "report.html", "html")
    assert path is not None
    return path


def _est(est: Any, with_ci: bool = True) -> str:
    if est is None or est.value is None or math.isnan(est.value):
        return "–"
    if not with_ci or math.isnan(est.ci_low):
        return f"{est.value:.3f}"
    return f"{est.value:.3f} ({_short(est.ci_low)}–{_short(est.ci_high)})"


def _short(value: float) -> str:
    # Interval bounds as .39 rather than 0.39: the table keeps to 120 columns (AUCs and gaps lie in [0, 1]).
    return f"{value:.2f}".replace("0.", ".", 1) if 0 <= value < 1 else f"{value:.2f}"


def print_comparison(rows: list[DemoRow], truth: dict[str, Any], *, console: Any, store: Path) -> None:
    from rich import box
    from rich.table import Table

    target, reference = truth["target_group"], truth["reference_group"]
    table = Table(title="Test-split AUC per group and AUC gap (95% bootstrap intervals)", title_justify="left",
                  header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    for column in ("model", "usage", "AUC", f"AUC {target}", f"AUC {reference}", "AUC gap", "worst", "detected (p)"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        p_text = "" if math.isnan(row.p_value) else f" ({'<0.001' if row.p_value < 0.001 else f'{row.p_value:.3f}'})"
        # a method's row names its method under the usage it mitigates: "+ reweighting" below "linear_probe"
        usage = f"+ {row.method}" if row.method else row.usage
        table.add_row(row.label, usage, _est(row.auc, False), _est(row.groups.get(target)),
                      _est(row.groups.get(reference)), _est(row.gap), row.worst or "–",
                      ("[green]yes[/green]" if row.detected else "[yellow]no[/yellow]") + p_text)  # fmt: skip
    console.print()
    console.print(f"[bold]planted disparity[/bold] ({truth['n_samples']} images): {planted_description(truth)}")
    console.print(table)
    names = [f"{r.label.rstrip('†')}/{r.usage}" + (f"/{r.method}" if r.method else "") for r in rows]
    console.print("runs: " + ", ".join(f"{name} {r.run_id}" + ("" if r.computed else " (stored)")
                                       for name, r in zip(names, rows)))  # fmt: skip
    console.print("[yellow]† RANDOM weights: tiny CLIP models of real architectures (ViT / modified-ResNet image tower "
                  "+ text transformer), no download. The numbers exercise the pipeline and say nothing about "
                  "pretrained foundation models.[/yellow]")
    console.print(f"detected = the worst-AUC group is {target} and p < {DETECTION_ALPHA:g}, p being the paired "
                  "bootstrap test of no AUC disparity (max-|t| over the group differences). "
                  f"Results stored in {store} (fairfm runs list --store {store}); '(stored)': found there, "
                  "not recomputed.")
    console.print("The same runs on a real dataset and checkpoint: fairfm run --dataset chexpert --root "
                  "/data/CheXpert-v1.0-small --model biomedclip --checkpoint /models/biomedclip --usage lp --attr "
                  "sex,race (or a SPEC.yaml; every usage and its defaults: docs/usages.md).")
