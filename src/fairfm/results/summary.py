"""The headline numbers of a stored run: overall utility of its first task and that task's gap over the first
attribute — AUC and AUC gap for classification, mean Dice and Dice gap for segmentation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairfm.results.store import RunRecord

#: Utility metric and its gap, classification first, segmentation otherwise.
KEY_METRICS = (("auc", "auc_gap"), ("mean_dice", "dice_gap"))


def key_metrics(record: "RunRecord") -> dict[str, Any]:
    """``task``, ``attribute``, ``utility_metric``, ``utility``, ``gap_metric``, ``gap`` (+ its interval) of a run."""
    metrics = record.metrics
    present = list(dict.fromkeys(metrics["task"].tolist()))
    tasks = [t for t in record.spec.get("tasks") or [] if t in present] or present
    attributes = record.spec.get("attributes") or []
    task = tasks[0] if tasks else None
    attribute = attributes[0] if attributes else None
    rows = metrics[metrics["task"] == task] if task is not None else metrics
    out: dict[str, Any] = {"task": task, "attribute": attribute}
    for utility, gap in KEY_METRICS:
        overall = rows[(rows["attribute"] == "__all__") & (rows["metric"] == utility)]
        if overall.empty:
            continue
        out["utility_metric"], out["utility"] = utility, float(overall["value"].iloc[0])
        gaps = rows[(rows["attribute"] == attribute) & (rows["group"] == "__summary__") & (rows["metric"] == gap)]
        out["gap_metric"] = gap
        out["gap"] = float(gaps["value"].iloc[0]) if not gaps.empty else None
        out["gap_ci"] = ((float(gaps["ci_low"].iloc[0]), float(gaps["ci_high"].iloc[0]))
                         if not gaps.empty else None)  # fmt: skip
        break
    return out
