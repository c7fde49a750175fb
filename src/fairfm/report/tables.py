"""Human-readable views of a :class:`fairfm.metrics.Report`: rich terminal tables and Markdown.

What a person reads first: per attribute, one line per group with n, AUC ± CI and the rates, then the gaps.
"""

from __future__ import annotations

import math
from typing import Iterable

from rich.console import Group as RichGroup
from rich.table import Table
from rich.text import Text

from fairfm.metrics.report import AttributeResult, Estimate, Report, TaskResult

CLASSIFICATION_GROUP_COLUMNS = ("auc", "acc", "tpr", "fpr", "ppv", "ece")
CLASSIFICATION_GAPS = ("auc_gap", "worst_auc", "es_auc", "tpr_gap", "fpr_gap", "eod", "dpd", "ece_gap")
SEGMENTATION_GAPS = ("dice_gap", "worst_dice", "es_dice", "dice_std", "iou_gap", "es_iou")
LABELS = {
    "auc": "AUC", "acc": "Acc", "tpr": "TPR", "fpr": "FPR", "tnr": "TNR", "ppv": "PPV", "ece": "ECE", "bce": "BCE",
    "dice": "Dice", "iou": "IoU", "auc_gap": "AUC gap", "worst_auc": "worst AUC", "es_auc": "ES-AUC",
    "tpr_gap": "TPR gap", "fpr_gap": "FPR gap", "eod": "EOD", "dpd": "DPD", "ece_gap": "ECE gap",
    "dice_gap": "Dice gap", "worst_dice": "worst Dice", "es_dice": "ES-Dice", "dice_std": "Dice std",
    "iou_gap": "IoU gap", "es_iou": "ES-IoU",
}  # fmt: skip


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _with_ci(est: Estimate | None, digits: int = 3) -> str:
    if est is None:
        return "–"
    text = _num(est.value, digits)
    if math.isfinite(est.ci_low) and math.isfinite(est.ci_high):
        text += f" [{_num(est.ci_low, digits)}, {_num(est.ci_high, digits)}]"
    return text


def _digits(report: Report) -> int:
    return 1 if report.profile is not None and report.profile.scale != 1.0 else 3


def _group_columns(report: Report) -> tuple[str, ...]:
    if report.kind == "segmentation":
        first = next(iter(report.tasks.values()))
        return tuple(m for m in ("dice", "iou") if any(m in e for a in first.attributes.values() for e in a.group_metrics.values()))
    return CLASSIFICATION_GROUP_COLUMNS


def _gap_names(report: Report, attr: AttributeResult) -> list[str]:
    if report.shown_metrics:
        names = list(report.shown_metrics)
    elif report.profile is not None and report.profile.summary_metrics:
        names = list(report.profile.summary_metrics)
    else:
        names = list(SEGMENTATION_GAPS if report.kind == "segmentation" else CLASSIFICATION_GAPS)
    return [n for n in names if n in attr.summary]


def _header(report: Report, task: TaskResult) -> str:
    if report.kind == "segmentation":
        parts = [f"n={task.n}"] + [f"{LABELS.get(m.removeprefix('mean_'), m)} {_with_ci(e)}"
                                   for m, e in task.overall.items() if m.startswith("mean_")]  # fmt: skip
        return " · ".join(parts)
    digits = _digits(report)
    try:
        float(task.threshold_policy)
        threshold = f"threshold {task.threshold_policy} (fixed)"
    except ValueError:
        threshold = f"threshold {task.threshold_policy} = {_num(task.threshold, 4)}"
    return f"n={task.n} (positives {task.n_pos}) · AUC {_with_ci(task.overall['auc'], digits)} · {threshold}"


def _flags(report: Report, task: TaskResult) -> list[str]:
    flags = []
    if report.profile is not None:
        flags += [f"profile {report.profile.name}: {f}" for f in report.profile.flags]
    if task.threshold_leaks_labels:
        flags.append(f"threshold {task.threshold_policy} saw the evaluated set's labels (chosen on the set it "
                     "scores): its thresholded metrics are optimistic")  # fmt: skip
    leaking_extra = [name for name, leaks in task.extra_threshold_leaks.items() if leaks]
    if leaking_extra and not task.threshold_leaks_labels:
        flags.append(f"thresholds {', '.join(leaking_extra)} saw the evaluated set's labels")
    if task.n_unknown_label or task.n_uncertain_label:
        flags.append(f"{task.n_unknown_label} unknown label(s) left out; {task.n_uncertain_label} uncertain (-1) "
                     f"label(s), policy '{report.uncertain}'")  # fmt: skip
    if report.clients is not None:
        sites = report.clients["sites"]
        flags.append(f"client-averaged: every metric computed per site and averaged over {len(sites)} site(s) "
                     f"({', '.join(sites)})")  # fmt: skip
    return flags


def _ci(est: Estimate | None, digits: int = 3) -> str:
    if est is None or not (math.isfinite(est.ci_low) and math.isfinite(est.ci_high)):
        return ""
    return f"{_num(est.ci_low, digits)}–{_num(est.ci_high, digits)}"


def _q(q: float | None, n_resamples: int) -> str:
    if q is None:
        return ""
    floor = 1.0 / max(n_resamples, 1)
    return f"<{floor:g}" if q < floor else f"{q:.3g}"


def rich_tables(report: Report) -> RichGroup:
    """Renderables for ``rich.console.Console.print``: per attribute a group table, then a gap table."""
    parts: list = []
    cols = _group_columns(report)
    digits = _digits(report)
    with_ci = bool(report.bootstrap["B"])
    for task in report.tasks.values():
        title = f"[bold]{task.task}[/bold] · " if report.multi_task else ""
        parts.append(Text.from_markup(title + _header(report, task)))
        for flag in _flags(report, task):
            parts.append(Text(f"⚠ {flag}", style="yellow"))
        for attr in task.attributes.values():
            table = Table(title=f"[bold]{attr.name}[/bold]", title_justify="left", show_edge=False,
                          header_style="bold", pad_edge=False)  # fmt: skip
            table.add_column("group")
            table.add_column("n", justify="right")
            if report.kind == "classification":
                table.add_column("n_pos", justify="right")
            table.add_column(LABELS.get(cols[0], cols[0]), justify="right")
            if with_ci:
                table.add_column("95% CI", justify="right", style="dim", no_wrap=True, min_width=11)
            for metric in cols[1:]:
                table.add_column(LABELS.get(metric, metric), justify="right")
            for group in attr.groups:
                n, n_pos = attr.group_counts[group]
                metrics = attr.group_metrics.get(group, {})
                style = "dim" if group in attr.excluded else None
                cells = [group, str(n)] + ([str(n_pos)] if report.kind == "classification" else [])
                first = metrics.get(cols[0])
                cells.append(_num(first.value, digits) if first else "–")
                if with_ci:
                    cells.append(_ci(first, digits) if group not in attr.excluded else "")
                cells += [_num(metrics[m].value, digits) if m in metrics else "–" for m in cols[1:]]
                table.add_row(*cells, style=style)
            parts.append(table)
            gaps = Table(show_edge=False, show_header=True, header_style="dim", pad_edge=False, box=None)
            gaps.add_column("  gap metric")
            gaps.add_column("value", justify="right")
            if with_ci:
                gaps.add_column("95% CI", justify="right", style="dim")
                gaps.add_column("q", justify="right", style="dim")
            for name in _gap_names(report, attr):
                est = attr.summary[name]
                row = [f"  {LABELS.get(name, name)}", _num(est.value, digits)]
                if with_ci:
                    row += [_ci(est, digits), _q(attr.significance.get(f"{name}_q"), report.bootstrap["B"])]
                gaps.add_row(*row)
            parts.append(gaps)
            worst = attr.worst_group.get("auc") or attr.worst_group.get("dice")
            if worst:
                parts.append(Text(f"  worst group: {worst}"))
            for group, reason in attr.excluded.items():
                parts.append(Text(f"  excluded {group}: {reason}", style="dim"))
            for note in attr.notes:
                parts.append(Text(f"  ⚠ {note}", style="yellow"))
            for metric, note in attr.metric_notes.items():
                parts.append(Text(f"  ⚠ {metric}: {note}", style="yellow"))
            parts.append(Text(""))
    if with_ci:
        b = report.bootstrap
        kind, test = ("percentile for groups, simultaneous max-|t| for gaps, worst groups and ES",
                      "p of the max-|t| test of no disparity") if b.get("ci_method") == "simultaneous" else (
                      "percentile", "share of resamples in which the gap's sign flips")  # fmt: skip
        parts.append(Text(f"{int(round(b['ci'] * 100))}% intervals ({kind}) from {b['B']} bootstrap resamples "
                          f"stratified by {b['stratify']} (seed {b['seed']}); q: Benjamini–Hochberg-adjusted {test}",
                          style="dim"))  # fmt: skip
    return RichGroup(*parts)


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown(report: Report) -> str:
    """The same content as the terminal table, as GitHub-flavoured Markdown."""
    lines: list[str] = []
    cols = _group_columns(report)
    digits = _digits(report)
    for task in report.tasks.values():
        lines.append(f"## {task.task}" if report.multi_task else "## Evaluation")
        lines.append("")
        lines.append(_header(report, task))
        lines += [f"> ⚠ {flag}" for flag in _flags(report, task)]
        for attr in task.attributes.values():
            lines += ["", f"### {attr.name}", ""]
            head = ["group", "n"] + (["n_pos"] if report.kind == "classification" else [])
            head += [LABELS.get(m, m) for m in cols]
            lines.append(_md_row(head))
            lines.append(_md_row(["---"] * len(head)))
            for group in attr.groups:
                n, n_pos = attr.group_counts[group]
                metrics = attr.group_metrics.get(group, {})
                cells = [group, str(n)] + ([str(n_pos)] if report.kind == "classification" else [])
                cells += [(_with_ci(metrics[m], digits) if i == 0 else _num(metrics[m].value, digits)) if m in metrics else "–"
                          for i, m in enumerate(cols)]  # fmt: skip
                lines.append(_md_row(cells))
            lines.append("")
            lines.append(_md_row(["metric", "value [95% CI]", "q"]))
            lines.append(_md_row(["---", "---", "---"]))
            for name in _gap_names(report, attr):
                q = attr.significance.get(f"{name}_q")
                lines.append(_md_row([LABELS.get(name, name), _with_ci(attr.summary[name], digits),
                                      _q(q, report.bootstrap["B"])]))  # fmt: skip
            for group, reason in attr.excluded.items():
                lines.append(f"\n_excluded {group}: {reason}_")
            for note in attr.notes:
                lines.append(f"\n> ⚠ {note}")
            for metric, note in attr.metric_notes.items():
                lines.append(f"\n> ⚠ {metric}: {note}")
    lines.append("")
    return "\n".join(lines)
