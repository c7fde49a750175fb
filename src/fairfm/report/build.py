"""The report of a selection of stored runs (``fairfm report``) and of one evaluation (``fairfm evaluate --format
html``): which tables and figures, computed from the stored tables only — nothing is re-predicted, and the only
recomputation is of curves (ROC, calibration, metrics against the threshold) from the stored predictions.

Sections, in reading order: what was compared (and every warning a reader needs before the numbers), the
leaderboard per task and attribute, the utility–fairness trade-off with its Pareto front, Khan et al.'s fairness
score, per-group performance relative to the population, a forest plot of every gap with its interval, per-run
curves, segmentation distributions, the embedding analyses stored for these runs, and the provenance of every
number (specs, code, data and weights versions).
"""

from __future__ import annotations

import contextvars
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.report.document import (Cell, DetailsBlock, Document, FigureBlock, NoteBlock, Section, TableBlock,
                                    TextBlock, slug)  # fmt: skip
from fairfm.report.leaderboard import (ALL, SUMMARY, TRADEOFF, Configuration, attributes_of, cell_of,
                                       configurations, fairness_scores, format_value, leaderboard,
                                       leaderboard_columns, metric_index, metric_value, tasks_of)  # fmt: skip
from fairfm.report.tables import LABELS

if TYPE_CHECKING:
    from fairfm.metrics import Report
    from fairfm.results.store import RunRecord, Store

#: Gaps of the forest plot, per kind of run.
FOREST_GAPS = {"classification": ("auc_gap", "eod", "dpd", "ece_gap"), "segmentation": ("dice_gap", "iou_gap")}
#: Thresholded metrics drawn against the threshold for each run with curves.
THRESHOLD_METRICS = ("tpr", "fpr", "pos_rate")


#: Section ids taken in the document being built: task and attribute names are free text ("No Finding",
#: "sex×race"), so every id is a slug made unique within its document.
_TAKEN_IDS: contextvars.ContextVar[set[str]] = contextvars.ContextVar("report_section_ids")


@contextmanager
def _document_ids():
    token = _TAKEN_IDS.set(set())
    try:
        yield
    finally:
        _TAKEN_IDS.reset(token)


def _sid(*parts: str) -> str:
    """A URL-safe section id from ``parts``, unique within the document being built."""
    return slug("-".join(str(p) for p in parts), _TAKEN_IDS.get())


@dataclass
class ReportOptions:
    """What a report covers. ``tasks``/``attributes``: restrict (default: every one the runs have); ``curves``: how
    many configurations get per-group ROC, calibration and threshold figures (the first run of each; 0 = none)."""

    title: str = "fairfm report"
    tasks: list[str] | None = None
    attributes: list[str] | None = None
    curves: int = 6
    embeddings: bool = True


@dataclass
class StoreReport:
    """A built report: the document (rendered to HTML, Markdown or LaTeX) and the leaderboards as one frame (CSV)."""

    document: Document
    leaderboards: pd.DataFrame
    configurations: list[Configuration] = field(default_factory=list)


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def _value_cell(mean: float, std: float, low: float, high: float, n_seeds: int, *, leaks: bool = False,
                per_seed: Sequence[tuple[Any, float, float, float]] = ()) -> Cell:  # fmt: skip
    title = None
    if per_seed and len(per_seed) > 1:
        title = "; ".join(f"seed {s}: {v:.3f} [{lo:.3f}, {hi:.3f}]" for s, v, lo, hi in per_seed
                          if v is not None and math.isfinite(v))  # fmt: skip
    return Cell(format_value(mean, std, low, high, n_seeds), sort_value=mean if math.isfinite(mean) else None,
                title=title, flag="test-label threshold" if leaks else None)  # fmt: skip


# ------------------------------------------------------------------------------------------------- store report


def build_report(store: "Store", records: Sequence["RunRecord"], options: ReportOptions | None = None) -> StoreReport:
    """The report of ``records`` (stored runs of ``store``)."""
    with _document_ids():
        return _build_report(store, records, options)


def _build_report(store: "Store", records: Sequence["RunRecord"], options: ReportOptions | None) -> StoreReport:
    from fairfm import __version__

    options = options or ReportOptions()
    if not records:
        raise InputError(f"no runs to report in {store.path}")
    configs = configurations(records)
    tasks = _chosen(options.tasks, tasks_of(records), "task")
    attributes = _chosen(options.attributes, attributes_of(records), "attr")
    by_kind = {kind: [c for c in configs if c.kind == kind] for kind in ("classification", "segmentation")}

    sections = [_overview(records, configs, tasks, attributes)]
    frames = []
    board_sections, tradeoff_sections = [], []
    datasets = list(dict.fromkeys(c.describe()["dataset"] for c in configs))
    for kind, kind_configs in by_kind.items():
        # one board per dataset: a leaderboard, a Pareto front or a fairness score across datasets compares nothing
        for dataset in datasets:
            prefix = f"{dataset} · " if len(datasets) > 1 else ""
            for task in tasks:
                for attribute in attributes:
                    having = [c for c in kind_configs if c.describe()["dataset"] == dataset
                              and _has(c, task, attribute)]  # fmt: skip
                    if not having:
                        continue
                    board = leaderboard(having, task=task, attribute=attribute)
                    frames.append(board)
                    board_sections.append(_leaderboard_section(board, kind, task, attribute, prefix))
                    tradeoff_sections.append(_tradeoff_section(board, kind, task, attribute, prefix))
    if board_sections:
        sections.append(Section(_sid("leaderboard"), "Leaderboard", intro=_LEADERBOARD_INTRO,
                                subsections=board_sections))  # fmt: skip
        sections.append(Section(_sid("tradeoff"), "Utility–fairness trade-off", intro=_TRADEOFF_INTRO,
                                subsections=tradeoff_sections))  # fmt: skip
    boards = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    classification = by_kind["classification"]
    if classification:
        score = _fairness_score_section(boards, tasks, attributes)
        if score is not None:
            sections.append(score)
        sections.append(_relative_section(classification, tasks, attributes))
    forest = _forest_section(configs, tasks, attributes)
    if forest is not None:
        sections.append(forest)
    if classification and options.curves > 0:
        curves = _curves_section(classification[: options.curves], tasks, attributes,
                                 omitted=max(0, len(classification) - options.curves))  # fmt: skip
        if curves is not None:
            sections.append(curves)
    if by_kind["segmentation"]:
        sections.append(_distribution_section(by_kind["segmentation"], tasks, attributes))
    if options.embeddings:
        embedding = _embedding_section(store, records, configs)
        if embedding is not None:
            sections.append(embedding)
    sections.append(_provenance_section(records, configs))
    generated = (f"fairfm {__version__} · generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} "
                 f"from {len(records)} run(s) of {store.path}")  # fmt: skip
    document = Document(title=options.title, subtitle=_subtitle(configs), sections=sections, generated=generated,
                        provenance=[f"store {store.path}", *(f"run {r.run_id}" for r in records)])  # fmt: skip
    return StoreReport(document, boards, configs)


def _chosen(asked: Sequence[str] | None, present: list[str], what: str) -> list[str]:
    if not asked:
        return present
    missing = [a for a in asked if a not in present]
    if missing:
        raise InputError(f"--{what} {', '.join(missing)}: not in the selected runs (they have: "
                         f"{', '.join(present) or 'none'})")  # fmt: skip
    return list(asked)


def _has(config: Configuration, task: str, attribute: str) -> bool:
    """Whether some run of the configuration has metrics of ``task`` over ``attribute``."""
    return any(key[0] == task and key[1] == attribute for r in config.records for key in metric_index(r))


def _subtitle(configs: list[Configuration]) -> str:
    models = sorted({str(c.first.spec.get("model")) for c in configs})
    methods = sorted({c.describe()["method"] for c in configs})
    return (f"{len(configs)} configuration(s): {len(models)} model(s) ({', '.join(models[:6])}"
            f"{', …' if len(models) > 6 else ''}), methods {', '.join(methods[:8])}")


def _overview(records, configs: list[Configuration], tasks: list[str], attributes: list[str]) -> Section:
    blocks: list[Any] = [TextBlock(
        f"{len(records)} stored run(s) in {len(configs)} configuration(s) (runs that differ only by the training "
        f"seed form one configuration). Tasks: {', '.join(tasks)}. Sensitive attributes: {', '.join(attributes)}. "
        "Every number is read from the runs' stored MetricTables (test split; thresholds as each run chose them); "
        "intervals are the runs' 95% bootstrap intervals, and over several seeds a value is the mean ± the sample "
        "standard deviation over seeds.")]  # fmt: skip
    stale = [r.run_id for r in records if r.stale]
    if stale:
        blocks.append(NoteBlock(f"{len(stale)} run(s) were stored by a fairfm whose numbers may differ from the "
                                f"current code's (stale): {', '.join(stale[:8])}. Recompute them with 'fairfm run'.",
                                kind="warning"))  # fmt: skip
    leaking = sorted({r.run_id for r in records if _leaks(r)})
    if leaking:
        blocks.append(NoteBlock(
            f"{len(leaking)} run(s) chose their threshold on the test labels ({', '.join(leaking[:8])}): their "
            "thresholded metrics (accuracy, TPR/FPR, EOD, DPD, …) are optimistic and marked 'test-label threshold'.",
            kind="warning"))  # fmt: skip
    aware = [c.label for c in configs if c.attribute_aware]
    if aware:
        blocks.append(NoteBlock("Attribute-aware configurations read the sensitive attribute at test time, which a "
                                "deployment may not be allowed to do: " + "; ".join(aware) + ".", kind="info"))
    rows = [[c.label, c.describe()["dataset"], str(c.first.spec.get("usage")), c.describe()["method"],
             Cell(str(len(c.records)), sort_value=len(c.records)),
             Cell("yes", flag="attribute-aware") if c.attribute_aware else "no"] for c in configs]  # fmt: skip
    blocks.append(TableBlock(["configuration", "dataset", "usage", "method", "seeds", "attribute at test"], rows,
                             caption="The configurations compared."))  # fmt: skip
    return Section(_sid("overview"), "What is compared", blocks=blocks)


def _leaks(record: "RunRecord") -> bool:
    m = record.metrics
    return "threshold_leaks_labels" in m.columns and bool(m["threshold_leaks_labels"].fillna(False).astype(bool).any())


_LEADERBOARD_INTRO = ("One row per configuration; click a column to sort. Utility (AUC, Dice) higher is better; gaps "
                      "(max − min over groups), EOD and DPD lower is fairer; ES- metrics (equity-scaled) higher is "
                      "better. Hover a value over several seeds to see each seed's interval.")
_TRADEOFF_INTRO = ("Each point is a configuration: utility against the gap between groups, with 95% bootstrap "
                   "intervals (one seed) or ± one standard deviation over seeds. The line joins the Pareto front: "
                   "no other configuration is both more useful and fairer.")


def _leaderboard_section(board: pd.DataFrame, kind: str, task: str, attribute: str, prefix: str = "") -> Section:
    columns = leaderboard_columns(kind)
    header = ["configuration", "seeds", *(title for _, _, title, _ in columns), "attribute at test"]
    rows, seed_rows = [], []
    for _, row in board.iterrows():
        cells: list[Any] = [Cell(row["label"], title=f"runs {row['run_ids']}"), Cell(str(row["n_seeds"]),
                                                                                     sort_value=row["n_seeds"])]
        for metric, _, _, _ in columns:
            cells.append(_value_cell(row[metric], row[f"{metric}_std"], row[f"{metric}_low"], row[f"{metric}_high"],
                                     int(row[f"{metric}_n"]), leaks=bool(row[f"{metric}_leaks"]),
                                     per_seed=row[f"{metric}_per_seed"]))  # fmt: skip
        cells.append(Cell("yes", flag="attribute-aware") if row["attribute_aware"] else "no")
        rows.append(cells)
        if row["n_seeds"] > 1:
            by_seed: dict[Any, list[Any]] = {}
            for index, (metric, _, _, _) in enumerate(columns):
                for seed, value, low, high in row[f"{metric}_per_seed"]:
                    by_seed.setdefault(seed, [None] * len(columns))[index] = _value_cell(value, math.nan, low, high, 1)
            seed_rows.extend([row["label"], str(seed), *values] for seed, values in by_seed.items())
    notes = []
    if board["stale"].any():
        notes.append("stale runs included: " + ", ".join(board.loc[board["stale"], "label"]))
    blocks: list[Any] = [TableBlock(header, rows, caption=(
        f"{prefix}task {task} over {attribute}, test split: mean ± sd over seeds, or value [95% CI] with one seed."),
        notes=notes)]  # fmt: skip
    if seed_rows:
        blocks.append(DetailsBlock("each seed with its 95% interval", [TableBlock(
            ["configuration", "seed", *(title for _, _, title, _ in columns)], seed_rows,
            caption=f"{prefix}task {task} over {attribute}: every run of the configurations above.")]))
    return Section(_sid("leaderboard", kind[:3], prefix, task, attribute), f"{prefix}{task} · {attribute}",
                   blocks=blocks)


def _tradeoff_section(board: pd.DataFrame, kind: str, task: str, attribute: str, prefix: str = "") -> Section:
    from fairfm.report.figures import figure_data_uri, pareto_front, tradeoff_plot

    utility, gap = TRADEOFF[kind]
    points = pd.DataFrame({
        "label": board["label"], "utility": board[utility],
        "utility_low": _error_low(board, utility), "utility_high": _error_high(board, utility),
        "fairness": board[gap], "fairness_low": _error_low(board, gap), "fairness_high": _error_high(board, gap),
        "attribute_aware": board["attribute_aware"].astype(bool), "colour_by": board["model"],
        "marker_by": board["method"],
    })  # fmt: skip
    fig = tradeoff_plot(points, utility=_label(utility), fairness=f"{_label(gap)} over {attribute}",
                        lower_is_fairer=True, title=f"{prefix}{task}: {_label(utility)} vs {_label(gap)} ({attribute})")
    front = pareto_front(points["utility"].to_numpy(float), points["fairness"].to_numpy(float))
    on_front = ", ".join(points.loc[front, "label"]) or "none"
    alt = (f"Scatter plot of {_label(utility)} against {_label(gap)} over {attribute} for task {task}, one point per "
           f"configuration ({len(points)}); Pareto front: {on_front}.")  # fmt: skip
    return Section(_sid("tradeoff", kind[:3], prefix, task, attribute), f"{prefix}{task} · {attribute}",
                   blocks=[FigureBlock(figure_data_uri(fig), alt=alt, caption=f"Pareto front: {on_front}.")])


def _error_low(board: pd.DataFrame, metric: str) -> pd.Series:
    # One seed: the bootstrap interval; several: ± one standard deviation over seeds (the caption says which).
    spread = board[metric] - board[f"{metric}_std"]
    return board[f"{metric}_low"].where(board["n_seeds"] <= 1, spread)


def _error_high(board: pd.DataFrame, metric: str) -> pd.Series:
    spread = board[metric] + board[f"{metric}_std"]
    return board[f"{metric}_high"].where(board["n_seeds"] <= 1, spread)


def _fairness_score_section(boards: pd.DataFrame, tasks: list[str], attributes: list[str]) -> Section | None:
    from fairfm.report.figures import fairness_score_plot, figure_data_uri

    if boards.empty or "auc_gap" not in boards.columns:
        return None
    subsections = []
    boards = boards[boards["auc_gap"].notna()]
    several = boards.groupby(["dataset", "task", "attribute"])["label"].transform("nunique") >= 2
    boards = boards[several]  # a score ranks configurations: one alone has nothing to be ranked against
    datasets = list(dict.fromkeys(boards["dataset"]))
    for dataset in datasets:
        for task in tasks:
            rows = boards[(boards["dataset"] == dataset) & (boards["task"] == task)]
            if rows.empty:
                continue
            prefix = f"{dataset} · " if len(datasets) > 1 else ""
            frame = rows.assign(score=rows.groupby("attribute")["auc_gap"].transform(fairness_scores))
            table_rows = [[r["label"], r["attribute"], Cell(f"{100 * r['auc_gap']:.2f}", sort_value=100 * r["auc_gap"]),
                           Cell(f"{r['score']:.2f}", sort_value=r["score"])] for _, r in frame.iterrows()]  # fmt: skip
            fig = fairness_score_plot(frame[["label", "attribute", "score"]], title=f"Fairness score, {prefix}task {task}")
            best = frame.loc[frame.groupby("attribute")["score"].idxmax()]
            alt = (f"Bars of Khan et al.'s fairness score per configuration for {prefix}task {task}, one panel per "
                   "attribute; fairest: " + "; ".join(f"{r['attribute']}: {r['label']}" for _, r in best.iterrows()))
            subsections.append(Section(_sid("score", prefix, task), f"{prefix}{task}", blocks=[
                FigureBlock(figure_data_uri(fig), alt=alt),
                TableBlock(["configuration", "attribute", "AUC gap (points)", "fairness score"], table_rows,
                           caption="FS = max gap + 1 − gap, gaps in AUC points: the least fair configuration scores "
                                   "1."),
            ]))  # fmt: skip
    if not subsections:
        return None
    return Section(_sid("fairness-score"), "Fairness score (Khan et al.)", subsections=subsections,
                   intro="A comparison, not a per-run metric: it ranks the configurations shown here on each "
                         "attribute's AUC gap (mean over seeds).")  # fmt: skip


def _relative_section(configs: list[Configuration], tasks: list[str], attributes: list[str]) -> Section:
    from fairfm.report.figures import figure_data_uri, relative_performance_plot

    subsections = []
    for attribute in attributes:
        rows = []
        for config in configs:
            for task in tasks:
                overall = cell_of(config, task, attribute, "auc", ALL)
                if overall is None or not math.isfinite(overall.mean):
                    continue
                for group in _groups(config.first, task, attribute):
                    cell = cell_of(config, task, attribute, "auc", group)
                    if cell is None or not math.isfinite(cell.mean):
                        continue
                    # One seed: the group AUC's own interval, shifted by the population AUC (the population's
                    # uncertainty is not in it); several seeds: ± one standard deviation over seeds.
                    if cell.n_seeds > 1:
                        low, high = cell.mean - cell.std, cell.mean + cell.std
                    else:
                        low, high = cell.ci_low, cell.ci_high
                    rows.append({"label": config.label, "task": task, "group": group,
                                 "delta": cell.mean - overall.mean, "delta_low": low - overall.mean,
                                 "delta_high": high - overall.mean})  # fmt: skip
        if not rows:
            continue
        frame = pd.DataFrame(rows)
        fig = relative_performance_plot(frame, metric="AUC", title=f"Group AUC − population AUC ({attribute})")
        worst = frame.loc[frame["delta"].idxmin()]
        alt = (f"Bar chart of each {attribute} group's AUC minus the population AUC, per task, for "
               f"{frame['label'].nunique()} configuration(s); the largest shortfall is {worst['group']} on "
               f"{worst['task']} in {worst['label']} ({worst['delta']:+.3f}).")  # fmt: skip
        subsections.append(Section(_sid("relative", attribute), attribute, blocks=[FigureBlock(figure_data_uri(fig),
                                                                                           alt=alt)]))
    return Section(_sid("relative"), "Per-group performance relative to the population", subsections=subsections,
                   intro="Khan et al.'s per-subgroup view: how far each group's AUC lies from the whole test set's. "
                         "Error bars: the group AUC's bootstrap interval (one seed) or ± one standard deviation over "
                         "seeds, shifted by the population AUC.")  # fmt: skip


def _groups(record: "RunRecord", task: str, attribute: str) -> list[str]:
    m = record.metrics
    rows = m[(m["task"].astype(str) == task) & (m["attribute"].astype(str) == attribute)]
    return [g for g in dict.fromkeys(rows["group"].astype(str)) if g not in (ALL, SUMMARY)]


def _forest_section(configs: list[Configuration], tasks: list[str], attributes: list[str]) -> Section | None:
    from fairfm.report.figures import figure_data_uri, forest_plot

    subsections = []
    for task in tasks:
        for attribute in attributes:
            rows = []
            for config in configs:
                for record in config.records:
                    for metric in FOREST_GAPS[config.kind]:
                        found = metric_value(record, task, attribute, metric, SUMMARY)
                        if found is None or not math.isfinite(found[0]):
                            continue
                        seed = record.spec.get("seed")
                        label = config.label if len(config.records) == 1 else f"{config.label} · seed {seed}"
                        rows.append({"label": label, "metric": _label(metric), "value": found[0], "low": found[1],
                                     "high": found[2]})  # fmt: skip
            if not rows:
                continue
            frame = pd.DataFrame(rows)
            fig = forest_plot(frame, reference=0.0, title=f"Gaps over {attribute}, task {task} (95% intervals)")
            alt = (f"Forest plot of {frame['metric'].nunique()} gap metric(s) over {attribute} for task {task}: one "
                   f"row per run ({frame['label'].nunique()}), the point estimate and its 95% bootstrap interval.")
            subsections.append(Section(_sid("forest", task, attribute), f"{task} · {attribute}",
                                       blocks=[FigureBlock(figure_data_uri(fig), alt=alt)]))  # fmt: skip
    if not subsections:
        return None
    return Section(_sid("forest"), "Every gap with its interval", subsections=subsections,
                   intro="Gaps are max − min over the groups compared; an interval that stays away from 0 is a "
                         "disparity the test set resolves. Intervals of gaps and worst-group metrics are "
                         "simultaneous over the group differences (fairfm's default) unless the run used a "
                         "reference profile.")  # fmt: skip


# ------------------------------------------------------------------------------------------------------- curves


@dataclass
class _Scored:
    """One task's evaluated (test) rows of a run and the threshold it used."""

    y: np.ndarray
    score: np.ndarray
    groups: pd.DataFrame
    threshold: float | None
    policy: str
    leaks: bool


def scored_rows(record: "RunRecord", task: str) -> _Scored | None:
    """The test rows of one task of a stored classification run (labels known) and the threshold the run used
    (:func:`fairfm.report.runs.run_threshold`); None when the run has no such rows. Group values that mean
    "unknown" (NaN, −1, "unknown", …) read as :data:`fairfm.groups.UNKNOWN`, left out of the curves as the metrics
    leave them out of every group."""
    from fairfm.groups import UNKNOWN, is_unknown
    from fairfm.report.runs import run_threshold

    predictions = record.predictions
    if "y_score" not in predictions.columns:
        return None
    rows = predictions[predictions["task"].astype(str) == task]
    test = rows[(rows["split"].astype(str) == "test") & rows["y_true"].isin([0, 1])]
    if test.empty:
        return None
    y, p = test["y_true"].to_numpy(np.float64), test["y_score"].to_numpy(np.float64)
    try:
        found = run_threshold(record, task, y, p)
        threshold, policy, leaks = found.value, found.policy, found.leaks_labels
    except InputError:  # e.g. a policy that needs validation rows the run does not have: curves without a line
        threshold, policy, leaks = None, str(record.spec.get("threshold")), False
    groups = {}
    for column in (c for c in test.columns if str(c).startswith("group_")):
        values = test[column].reset_index(drop=True)
        groups[str(column).removeprefix("group_")] = values.astype(str).where(~is_unknown(values), UNKNOWN)
    return _Scored(y, p, pd.DataFrame(groups), threshold, policy, leaks)


def curve_blocks(scored: _Scored, attribute: str, *, where: str) -> list[Any]:
    """ROC, calibration and threshold figures of one attribute's groups (``where`` names the run in alt texts)."""
    from fairfm.report.figures import calibration_plot, figure_data_uri, roc_plot, threshold_plot

    from fairfm.groups import UNKNOWN

    groups = scored.groups[attribute].to_numpy()
    known = groups != UNKNOWN
    if not known.all():
        scored = _Scored(scored.y[known], scored.score[known], scored.groups[known].reset_index(drop=True),
                         scored.threshold, scored.policy, scored.leaks)  # fmt: skip
        groups = groups[known]
    blocks: list[Any] = [
        FigureBlock(figure_data_uri(roc_plot(scored.y, scored.score, groups, title=f"ROC by {attribute}")),
                    alt=f"ROC curves of {where}, one per {attribute} group and one for all samples."),
        FigureBlock(figure_data_uri(calibration_plot(scored.y, scored.score, groups,
                                                     title=f"Calibration by {attribute}")),
                    alt=f"Reliability diagram of {where} per {attribute} group: observed positive rate against "
                        "mean predicted probability in ten equal-width bins."),
    ]  # fmt: skip
    for metric in THRESHOLD_METRICS:
        fig = threshold_plot(scored.y, scored.score, groups, metric=metric, threshold=scored.threshold,
                             policy=scored.policy, leaks_labels=scored.leaks,
                             title=f"{_label(metric)} against the threshold, by {attribute}")  # fmt: skip
        chosen = "no recorded threshold" if scored.threshold is None else (
            f"the chosen threshold {scored.threshold:.3f} ({scored.policy})")
        blocks.append(FigureBlock(figure_data_uri(fig), alt=f"{_label(metric)} of each {attribute} group of {where} "
                                                            f"as the threshold runs from 0 to 1, with {chosen}."))
    if scored.leaks:
        blocks.insert(0, NoteBlock(f"The threshold of {where} was chosen on the test labels ({scored.policy}): its "
                                   "thresholded metrics are optimistic.", kind="warning"))  # fmt: skip
    return blocks


def _curves_section(configs: list[Configuration], tasks: list[str], attributes: list[str], *,
                    omitted: int) -> Section | None:  # fmt: skip
    subsections = []
    for index, config in enumerate(configs):
        record = config.first
        found = next(((t, sc) for t in tasks if (sc := scored_rows(record, t)) is not None), None)
        if found is None:
            continue
        task, scored = found
        shown = [a for a in attributes if a in scored.groups.columns]
        # the first attribute's curves open, the others one click away
        blocks: list[Any] = [DetailsBlock(a, curve_blocks(scored, a, where=f"run {record.run_id}"), open=i == 0)
                             for i, a in enumerate(shown)]  # fmt: skip
        if not blocks:
            continue
        threshold = "none recorded" if scored.threshold is None else f"{scored.threshold:.3f} ({scored.policy})"
        subsections.append(Section(_sid("curves", str(index)), config.label, blocks=[
            TextBlock(f"Run {record.run_id} (seed {record.spec.get('seed')}), task {task}, test split. "
                      f"Threshold: {threshold}."), *blocks]))  # fmt: skip
    if not subsections:
        return None
    intro = ("Per-group ROC and calibration curves and the thresholded rates as the threshold varies, for the first "
             "run of each configuration (its first task).")
    if omitted:
        intro += f" {omitted} further configuration(s) omitted (raise --curves to include them)."
    return Section(_sid("curves"), "Curves per group", subsections=subsections, intro=intro)


def _distribution_section(configs: list[Configuration], tasks: list[str], attributes: list[str]) -> Section:
    from fairfm.groups import is_unknown
    from fairfm.report.figures import distribution_plot, figure_data_uri

    subsections = []
    for index, config in enumerate(configs):
        record = config.first
        predictions = record.predictions
        blocks: list[Any] = []
        for task in tasks:
            rows = predictions[(predictions["task"].astype(str) == task) & (predictions["split"].astype(str) == "test")]
            if rows.empty or "dice" not in rows.columns:
                continue
            rows = rows[rows["dice"].notna()]
            for attribute in attributes:
                column = f"group_{attribute}"
                if column not in rows.columns:
                    continue
                known = rows[~is_unknown(rows[column])]  # unknown groups are in no group, as in the metrics
                for metric in ("dice", "iou"):
                    if metric not in rows.columns:
                        continue
                    fig = distribution_plot(known[metric].to_numpy(float), known[column].astype(str).to_numpy(),
                                            metric=_label(metric), title=f"{task}: {_label(metric)} by {attribute}")
                    blocks.append(FigureBlock(figure_data_uri(fig), alt=(
                        f"Per-sample {_label(metric)} distributions of {task} for each {attribute} group, run "
                        f"{record.run_id}.")))  # fmt: skip
        if blocks:
            subsections.append(Section(_sid("distributions", str(index)), config.label, blocks=blocks))
    return Section(_sid("segmentation"), "Segmentation: per-group Dice and IoU", subsections=subsections,
                   intro="Per-sample scores of the test split (the first run of each configuration).")


def _embedding_section(store: "Store", records: Sequence["RunRecord"],
                       configs: list[Configuration]) -> Section | None:  # fmt: skip
    try:
        from fairfm.analysis.embeddings import stored_embedding_analyses
    except ImportError:  # the analysis package is optional at build time
        return None
    from fairfm.report.embedding_blocks import embedding_blocks

    label_of = {r.run_id: c.label for c in configs for r in c.records}
    keys = {str((r.meta.get("features") or {}).get("key")) for r in records if (r.meta.get("features") or {}).get("key")}
    found = stored_embedding_analyses(store, [r.run_id for r in records], sorted(keys))
    # One analysis per (feature cache, split, options), the newest: the runs of one cache share their embedding.
    newest: dict[str, tuple[str, Any]] = {}
    for name, analysis in found:
        identity = json.dumps([analysis.source.get("key"), analysis.source.get("split"), analysis.options],
                              sort_keys=True, default=str)  # fmt: skip
        newest[identity] = (name, analysis)
    if not newest:
        return None
    subsections = []
    for index, (name, analysis) in enumerate(newest.values()):
        run_id = analysis.source.get("run_id")
        split = analysis.source.get("split", analysis.options.get("split", "test"))
        title = (f"{label_of.get(run_id, run_id)} (run {run_id}, {split} split)" if run_id
                 else f"feature cache {str(analysis.source.get('key'))[:12]} ({split} split)")  # fmt: skip
        subsections.append(Section(_sid("embeddings", str(index)), title, blocks=embedding_blocks(analysis)))
    return Section(_sid("embeddings"), "Embedding-bias analysis", subsections=subsections,
                   intro="From 'fairfm analyze embeddings' (Glocker et al.): how the frozen embedding separates the "
                         "groups — principal modes by group, Kolmogorov–Smirnov tests between groups, and how well "
                         "the attribute is predicted from the embedding.")  # fmt: skip


def _provenance_section(records: Sequence["RunRecord"], configs: list[Configuration]) -> Section:
    label_of = {r.run_id: c.label for c in configs for r in c.records}
    rows = []
    for record in records:
        meta = record.meta or {}
        code = meta.get("code") or {}
        data = meta.get("data") or {}
        rows.append([
            Cell(record.run_id), label_of.get(record.run_id, ""), str(record.spec.get("seed")),
            str(meta.get("created", ""))[:19].replace("T", " "),
            f"{code.get('fairfm', '?')}" + (f" ({str(code['git'])[:10]})" if code.get("git") else ""),
            _short(data.get("sha256")), _short(meta.get("weights")),
            ", ".join(f"{k} {v}" for k, v in sorted((meta.get("results_versions") or {}).items())),
            Cell("stale", flag="stale") if record.stale else "current",
        ])  # fmt: skip
    specs = [DetailsBlock(f"spec of {record.run_id}", [TextBlock(json.dumps(record.spec, indent=2, sort_keys=True,
                                                                            default=str))])
             for record in records]  # fmt: skip
    return Section(_sid("provenance"), "Provenance", blocks=[
        TextBlock("What produced every number: the code version, the data checksum (SHA-256 of the prepared "
                  "dataset), the weights checksum and the results versions of the components each run used."),
        TableBlock(["run", "configuration", "seed", "created (UTC)", "fairfm (git)", "data sha256", "weights",
                    "results versions", "status"], rows, caption="Runs in this report."),
        DetailsBlock(f"Specs ({len(records)})", specs),
    ])  # fmt: skip


def _short(value: Any) -> str:
    if not value:
        return "–"
    text = str(value)
    return text.split(":")[-1][:12]


# --------------------------------------------------------------------------------------------- one evaluation


def build_evaluation_report(report: "Report", inputs: Any = None, *, source: str = "predictions",
                            title: str = "fairfm evaluation", provenance: Sequence[str] = ()) -> Document:  # fmt: skip
    """The HTML document of one ``fairfm evaluate``: the auditor's journey from predictions and demographics to one
    file. ``inputs`` (:class:`fairfm.metrics.frames.EvaluatedInputs`, optional) adds the per-group curves;
    ``provenance``: lines naming what was evaluated (files and their checksums, the options)."""
    with _document_ids():
        return _build_evaluation_report(report, inputs, source=source, title=title, provenance=provenance)


def _build_evaluation_report(report: "Report", inputs: Any, *, source: str, title: str,
                             provenance: Sequence[str]) -> Document:  # fmt: skip
    from fairfm import __version__
    from fairfm.report.figures import distribution_plot, figure_data_uri, forest_plot, relative_performance_plot

    sections: list[Section] = []
    intro = [TextBlock(f"Per-group metrics of {source} with 95% bootstrap intervals "
                       f"({report.bootstrap.get('B', 0)} resamples, seed {report.bootstrap.get('seed')}).")]
    for warning in report.warnings:
        intro.append(NoteBlock(warning, kind="warning"))
    for task in report.tasks.values():
        if task.threshold_leaks_labels:
            intro.append(NoteBlock(f"{task.task}: the threshold ({task.threshold_policy}) was chosen on the evaluated "
                                   "set's own labels; thresholded metrics are optimistic. Give validation "
                                   "predictions (--val-file or --split-column) to avoid it.", kind="warning"))
    sections.append(Section(_sid("summary"), "Summary", blocks=intro))
    segmentation = report.kind == "segmentation"
    for task in report.tasks.values():
        blocks: list[Any] = []
        overall_rows = [[_label(m), _value_cell(e.value, math.nan, e.ci_low, e.ci_high, 1,
                                                leaks=task.leaks_labels(m))]
                        for m, e in task.overall.items() if not m.startswith("n_")]  # fmt: skip
        blocks.append(TableBlock(["metric", "value [95% CI]"], overall_rows, caption=(
            f"{task.task}: all {task.n} samples" + ("" if segmentation else
                                                    f", threshold {task.threshold_policy}"
                                                    + (f" = {task.threshold:.3f}" if task.threshold is not None
                                                       else "")))))  # fmt: skip
        relative_rows, forest_rows = [], []
        utility = "dice" if segmentation else "auc"
        population = task.overall.get("mean_dice" if segmentation else "auc")
        for attr in task.attributes.values():
            metrics = list(dict.fromkeys(m for g in attr.group_metrics.values() for m in g))
            shown = [m for m in metrics if m in ("auc", "acc", "tpr", "fpr", "ppv", "ece", "dice", "iou")] or metrics
            rows = []
            for group in attr.groups:
                n, n_pos = attr.group_counts.get(group, (0, 0))
                values = attr.group_metrics.get(group, {})
                rows.append([group, Cell(str(n), sort_value=n), *(
                    _value_cell(values[m].value, math.nan, values[m].ci_low, values[m].ci_high, 1,
                                leaks=task.leaks_labels(m)) if m in values else None for m in shown),
                    attr.excluded.get(group, "")])  # fmt: skip
                if utility in values and population is not None:
                    est = values[utility]
                    relative_rows.append({"label": attr.name, "task": task.task, "group": group,
                                          "delta": est.value - population.value,
                                          "delta_low": est.ci_low - population.value,
                                          "delta_high": est.ci_high - population.value})  # fmt: skip
            summary_rows = []
            for metric, est in attr.summary.items():
                p = attr.significance.get(f"{metric}_p")
                summary_rows.append([_label(metric), _value_cell(est.value, math.nan, est.ci_low, est.ci_high, 1,
                                                                 leaks=task.leaks_labels(metric)),
                                     Cell("–" if p is None or not math.isfinite(p) else f"{p:.3g}",
                                          sort_value=p if p is not None and math.isfinite(p) else None)])
                if metric in FOREST_GAPS[report.kind] and math.isfinite(est.value):
                    forest_rows.append({"label": attr.name, "metric": _label(metric), "value": est.value,
                                        "low": est.ci_low, "high": est.ci_high})  # fmt: skip
            sub_blocks: list[Any] = [
                TableBlock(["group", "n", *(_label(m) for m in shown), "note"], rows,
                           caption=f"{task.task} by {attr.name}: per-group metrics [95% CI]."),
                TableBlock(["summary", "value [95% CI]", "p (no disparity)"], summary_rows,
                           caption=f"{task.task} over {attr.name}: gaps and equity-scaled metrics."),
            ]  # fmt: skip
            if attr.notes:
                sub_blocks.extend(NoteBlock(note, kind="info") for note in attr.notes)
            if inputs is not None and not segmentation:
                arrays = inputs.classification(task.task, attr.name)
                if arrays is not None:
                    y, p, groups = arrays
                    scored = _Scored(y, p, pd.DataFrame({attr.name: groups}), task.threshold,
                                     task.threshold_policy, task.threshold_leaks_labels)  # fmt: skip
                    sub_blocks.append(DetailsBlock("curves", curve_blocks(scored, attr.name, where=f"{task.task}"),
                                                   open=True))  # fmt: skip
            if inputs is not None and segmentation:
                for metric in ("dice", "iou"):
                    found = inputs.segmentation(attr.name, metric)
                    if found is None:
                        continue
                    fig = distribution_plot(found[0], found[1], metric=_label(metric),
                                            title=f"{_label(metric)} by {attr.name}")
                    sub_blocks.append(FigureBlock(figure_data_uri(fig), alt=f"Per-sample {_label(metric)} "
                                                                            f"distributions of each {attr.name} group."))
            blocks.append(Section(_sid("task", task.task, attr.name), f"{attr.name}", blocks=sub_blocks))
        figures: list[Any] = []
        if relative_rows:
            frame = pd.DataFrame(relative_rows)
            fig = relative_performance_plot(frame, metric=_label(utility), title=f"{task.task}: group − population")
            figures.append(FigureBlock(figure_data_uri(fig), alt=f"Bars of each group's {_label(utility)} minus the "
                                                                 f"population's for task {task.task}."))
        if forest_rows:
            fig = forest_plot(pd.DataFrame(forest_rows), reference=0.0, title=f"{task.task}: gaps (95% intervals)")
            figures.append(FigureBlock(figure_data_uri(fig), alt=f"Forest plot of the gaps of task {task.task} per "
                                                                 "attribute with 95% intervals."))
        subsections = [b for b in blocks if isinstance(b, Section)]
        plain = [b for b in blocks if not isinstance(b, Section)]
        sections.append(Section(_sid("task", task.task), f"Task {task.task}", blocks=plain + figures,
                                subsections=subsections))  # fmt: skip
    generated = f"fairfm {__version__} · generated {datetime.now(timezone.utc).isoformat(timespec='seconds')}"
    return Document(title=title, subtitle=source, sections=sections, generated=generated,
                    provenance=[*provenance, f"bootstrap {json.dumps(report.bootstrap, default=str)}"])
