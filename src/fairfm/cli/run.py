"""``fairfm run [SPEC.yaml] [flags]``: one run (dataset × model × usage), from a spec to stored predictions/metrics.

Every field of :class:`fairfm.spec.RunSpec` is also a flag (``FIELD_FLAGS``); the precedence is SPEC.yaml, then
``--set FIELD=VALUE``, then the named flags. ``--dataset`` takes a prepared folder or a registered dataset name with
``--root RAW_RELEASE`` (prepared on the fly into ``STORE/datasets``, see :mod:`fairfm.data.cache`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer

from fairfm.cli import app

if TYPE_CHECKING:
    from fairfm.spec import RunSpec

#: The flag that sets each RunSpec field (a test fails when a field has none, so a new field must get one).
FIELD_FLAGS = {
    "dataset": "--dataset", "root": "--root", "view": "--view", "tasks": "--tasks", "attributes": "--attr",
    "split": "--split",
    "model": "--model", "model_options": "--model-option", "checkpoint": "--checkpoint",
    "trust_checkpoint": "--trust-checkpoint", "usage": "--usage", "method": "--method",
    "method_params": "--method-param", "hparams": "--hp", "seed": "--seed", "split_seed": "--split-seed",
    "threshold": "--threshold",
    "bootstrap": "--bootstrap", "device": "--device",
}  # fmt: skip
#: Fields whose flag value is taken as text, not read as YAML (``--model 2`` is the name "2", not the number 2).
_TEXT_FIELDS = ("dataset", "root", "view", "split", "model", "checkpoint", "usage", "method", "threshold", "device")
#: Optional text fields that ``--FLAG null`` (or ``none``) clears, e.g. a method set in SPEC.yaml.
_CLEARABLE = ("root", "view", "split", "checkpoint", "method")


@app.command("run")
def run_command(
    spec_file: Optional[Path] = typer.Argument(
        None, metavar="[SPEC.yaml]", help="Run spec (YAML, see fairfm.spec.RunSpec); optional when flags give it all."
    ),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", metavar="DIR|NAME",
        help="A prepared dataset folder, or a registered dataset name ('fairfm datasets list') with --root: the "
             "raw release is then prepared on the fly into STORE/datasets (once; found again on later runs).",
    ),
    root: Optional[str] = typer.Option(
        None, "--root", metavar="DIR", help="Raw release folder (with a dataset name), or where the images are."
    ),
    view: Optional[str] = typer.Option(
        None, "--view", metavar="NAME", help="Image column of multi-view samples: NAME reads path_NAME (e.g. oct)."
    ),
    tasks: Optional[List[str]] = typer.Option(None, "--tasks", metavar="A,B", help="Label columns (default: all)."),
    attributes: Optional[List[str]] = typer.Option(
        None, "--attr", "--attributes", metavar="A,B", help="Sensitive attributes, e.g. sex,race (default: all)."
    ),
    split: Optional[str] = typer.Option(
        None, "--split", metavar="POLICY",
        help="Split policy (default: the prepared folder's; 'patient' when preparing a dataset by name, seeded "
             "with --split-seed).",
    ),
    model: Optional[str] = typer.Option(None, "--model", help="Model card name ('fairfm models list')."),
    model_options: Optional[List[str]] = typer.Option(
        None, "--model-option", metavar="KEY=VALUE", help="Model constructor override (repeatable)."
    ),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", metavar="PATH", help="Weights file or folder."),
    trust_checkpoint: Optional[bool] = typer.Option(
        None, "--trust-checkpoint/--no-trust-checkpoint",
        help="Allow a pickled checkpoint (runs code in it; only for files you trust).",
    ),
    usage: Optional[str] = typer.Option(
        None, "--usage",
        help="How the model is used: zero_shot (zs), linear_probe (lp), clip_adapter, prototype, lora, bitfit, vpt, "
             "adapter, full_finetune (ft, full), sam_prompt (sam).",
    ),
    method: Optional[str] = typer.Option(None, "--method", help="Mitigation method (null: none)."),
    method_params: Optional[List[str]] = typer.Option(
        None, "--method-param", metavar="KEY=VALUE", help="Mitigation method parameter (repeatable)."
    ),
    hparams: Optional[List[str]] = typer.Option(
        None, "--hp", metavar="KEY=VALUE", help="Hyper-parameter of the usage (repeatable), e.g. --hp lr=1e-3."
    ),
    seed: Optional[str] = typer.Option(None, "--seed", metavar="INT", help="Run seed: training and bootstrap."),
    split_seed: Optional[str] = typer.Option(
        None, "--split-seed", metavar="INT",
        help="Split seed (default: the prepared folder's; 0 when preparing a dataset by name).",
    ),
    threshold: Optional[str] = typer.Option(None, "--threshold", metavar="POLICY", help="e.g. best_f1@val, 0.5."),
    bootstrap: Optional[str] = typer.Option(None, "--bootstrap", metavar="INT", help="Bootstrap resamples (0: no CI)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    assignments: Optional[List[str]] = typer.Option(
        None, "--set", metavar="FIELD=VALUE",
        help="Override any spec field (repeatable), e.g. --set hparams.lr=1e-3 --set attributes=sex,race; the "
             "named flags above win over --set.",
    ),
    print_spec: bool = typer.Option(
        False, "--print-spec", help="Print the spec as YAML (every field, defaults filled) and exit without running."
    ),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    recompute_stale: bool = typer.Option(
        False, "--recompute-stale",
        help="A run stored by a fairfm whose results versions were older (its numbers may differ) is computed again "
             "instead of being shown with a 'stale' mark; the stale run stays in the store.",
    ),
) -> None:
    """Run a spec, or find its stored result, and print a per-attribute summary (AUC per group, AUC gap).

    Every spec field is also a flag (they win over SPEC.yaml and --set), e.g. fairfm run --dataset chexpert --root
    /data/chexpert --model biomedclip --checkpoint ./biomedclip --usage lp --attr sex,race.
    """
    from fairfm.spec import RunSpec, parse_assignments

    named = {
        "dataset": dataset, "root": root, "view": view, "tasks": _joined(tasks), "attributes": _joined(attributes),
        "split": split,
        "model": model, "checkpoint": checkpoint, "usage": usage, "method": method, "seed": seed,
        "split_seed": split_seed, "threshold": threshold, "bootstrap": bootstrap, "device": device,
    }  # fmt: skip
    overrides = parse_assignments(assignments or [])
    origins: dict[str, str] = {}
    for field, text in named.items():
        if text is not None:
            overrides[field] = _flag_value(field, text)
            origins[field] = f"{FIELD_FLAGS[field]} {text}"
    if trust_checkpoint is not None:
        overrides["trust_checkpoint"] = trust_checkpoint
    for field, items in (("model_options", model_options), ("method_params", method_params), ("hparams", hparams)):
        flag = FIELD_FLAGS[field]
        for item in items or []:
            for key, value in parse_assignments([item], flag=flag, prefix=f"{field}.").items():
                overrides[key] = value
                origins[key] = f"{flag} {item}"

    spec = RunSpec.load(spec_file, overrides, origins=origins, flags=FIELD_FLAGS)
    _run(spec, store_dir, print_spec=print_spec, quiet=quiet, recompute_stale=recompute_stale)


def _run(spec: "RunSpec", store_dir: Path | None, *, print_spec: bool, quiet: bool,
         recompute_stale: bool = False) -> None:  # fmt: skip
    from fairfm.cli import make_console
    from fairfm.data.cache import resolve_dataset
    from fairfm.results import Store

    store = Store(store_dir)
    console = make_console(highlight=False)
    if not print_spec:
        from fairfm.runner import check_store_before_preparing

        check_store_before_preparing(spec, store)
    spec, prepared = resolve_dataset(spec, store.path, prepare=not print_spec, progress=not quiet)
    spec = _absolute_paths(spec)
    if print_spec:
        if prepared is not None and str(spec.dataset) == prepared.name:
            typer.echo(f"# dataset {prepared.name!r} is not prepared yet: the first run prepares it from "
                       f"{prepared.root} into {prepared.folder}")  # fmt: skip
        typer.echo(spec.to_yaml(), nl=False)
        return
    if prepared is not None:
        how = "prepared from" if prepared.prepared_now else "found (prepared earlier from"
        close = "" if prepared.prepared_now else ")"
        console.print(f"dataset {prepared.name}: {how} {prepared.root}{close} → {prepared.folder} "
                      f"(split {spec.split}, split seed {spec.split_seed})", markup=False, soft_wrap=True)  # fmt: skip

    from fairfm.report.tables import rich_tables
    from fairfm.runner import execute

    result = execute(spec, store, progress=not quiet, want_report=True, recompute_stale=recompute_stale)
    record = result.record
    state = "computed" if result.computed else "found in the store (not recomputed)"
    if result.stale:
        state = ("[yellow]found in the store, STALE[/yellow]: computed by a fairfm whose results versions were "
                 "older, so its numbers may differ from this version's (--recompute-stale recomputes it)")
    method = ""
    if spec.method is not None:
        about = record.meta.get("method") or {}
        aware = f", attribute-aware: reads {about.get('attribute')} at test time" if about.get("attribute_at_test") else ""
        method = f" · {spec.method}{aware}"
    console.print(f"run [bold]{record.run_id}[/bold]: {state} — {spec.model} · {spec.usage}{method} · seed "
                  f"{spec.seed}", markup=True)  # fmt: skip
    console.print(f"[dim]stored in {record.path}[/dim]", soft_wrap=True)
    report = result.report
    if report is not None:
        report.restrict(["dice_gap"] if report.kind == "segmentation" else ["auc_gap"])
        console.print(rich_tables(report))


def _joined(values: list[str] | None) -> str | None:
    # ``--attr sex,race`` and ``--attr sex --attr race`` mean the same.
    return ",".join(values) if values else None


def _flag_value(field: str, text: str) -> Any:
    from fairfm.spec import parse_value

    if field in _TEXT_FIELDS:
        return None if field in _CLEARABLE and text.strip().lower() in ("null", "none", "") else text
    return parse_value(field, text)


def _absolute_paths(spec: "RunSpec") -> "RunSpec":
    """``root``/``checkpoint``, and ``dataset`` when it is a path, made absolute: the printed spec then means the same
    from any folder (the run id is unchanged: ``resolve()`` makes paths absolute too)."""
    import os

    from fairfm.data.cache import is_prepared

    changes = {}
    for field in ("root", "checkpoint", "dataset"):
        value = getattr(spec, field)
        if value is None or (field == "dataset" and not is_prepared(value)):  # a name not prepared yet stays a name
            continue
        absolute = Path(os.path.abspath(Path(value).expanduser()))
        if absolute != value:
            changes[field] = str(absolute)
    return spec.replace(**changes) if changes else spec
