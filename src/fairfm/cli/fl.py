"""``fairfm fl run SPEC.yaml``: a federated run on Flower's simulation engine (see fairfm.federated.runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(help="Federated learning across sites on Flower (simulated on this machine).", no_args_is_help=True)


@app.command("run")
def run_command(
    spec_file: Path = typer.Argument(..., metavar="SPEC.yaml", help="A run spec with a federated: block."),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Rounds (overrides federated.rounds)."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Strategy (overrides federated.strategy)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Partition the dataset into clients, train the spec's usage on every client with the chosen strategy, and
    store the final global model's predictions as one run (pooled metrics; client-averaged and per-client views in
    meta.json). A crashed federation resumes from its last completed round when run again."""
    from fairfm.cli import make_console
    from fairfm.federated.runner import run_federated
    from fairfm.federated.spec import FederatedSpec
    from fairfm.results import Store

    fspec = FederatedSpec.from_yaml(spec_file, overrides={"rounds": rounds, "strategy": strategy})
    console = make_console(highlight=False, soft_wrap=True)

    def on_round(server_round: int, entry: dict[str, Any]) -> None:
        if quiet:
            return
        losses = ", ".join(f"{k}: {v:.4f}" for k, v in entry.get("train_loss", {}).items())
        aucs = ", ".join(f"{k}: {v:.3f}" for k, v in entry.get("val_auc", {}).items())
        console.print(f"round {server_round}/{fspec.federated.rounds}: train loss {losses}"
                      + (f"; val AUC {aucs}" if aucs else "") + f" ({entry.get('train_round_s', 0):.1f} s)")

    record = run_federated(fspec, Store(store_dir), progress=not quiet, on_round=on_round)
    console.print(summary_text(record))


def _fmt(estimate: Any) -> str:
    if not estimate or estimate.get("value") is None:
        return "–"
    low, high = estimate.get("ci") or [None, None]
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{estimate['value']:.3f}{interval}"


def summary_text(record: Any) -> str:
    """The final table: pooled and client-averaged AUC, ES-AUC and AUC gap (with intervals) per task and attribute,
    and the run id."""
    from fairfm.federated.runner import headline
    from fairfm.metrics.stored import report_from_metric_table

    pooled = headline(report_from_metric_table(record.metrics, record.meta["report"]))
    averaged = record.meta.get("client_averaged", {}).get("metrics", {})
    fed = record.meta.get("federated", {})
    lines = [f"run {record.run_id}: federated {record.meta.get('local_usage')} with {fed.get('strategy')}, "
             f"{fed.get('rounds')} rounds, clients {', '.join(fed.get('clients', []))}",
             f"{'task':<12} {'attribute':<10} {'view':<15} {'AUC':<22} {'ES-AUC':<22} {'AUC gap':<22}"]  # fmt: skip
    for task, entry in pooled.items():
        for view, source in (("pooled", entry), ("client-averaged", averaged.get(task, {}))):
            for attribute, values in (source.get("attributes") or {}).items():
                lines.append(f"{task:<12} {attribute:<10} {view:<15} {_fmt(source.get('auc')):<22} "
                             f"{_fmt(values.get('es_auc')):<22} {_fmt(values.get('auc_gap')):<22}")  # fmt: skip
    lines.append(f"stored in {record.path}")
    return "\n".join(lines)
