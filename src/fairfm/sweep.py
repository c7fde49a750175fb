"""Sweeps: a grid of run specs handed to an executor — in-process, a local process pool, or Ray — all writing to the
same results store.

```python
from fairfm.spec import SweepSpec
from fairfm.results import Store
from fairfm.sweep import run_sweep
outcomes = run_sweep(SweepSpec.from_yaml("sweep.yaml"), Store("fairfm_runs"), executor="pool", workers=2)
```

Every cell is an ordinary run (:func:`fairfm.runner.execute`), so a sweep resumes for free: the runs already in the
store are found in the parent process before anything is dispatched, and only the others are sent to the executor.
Every cell is checked before the first runs (unknown model or dataset, a checkpoint missing or not fitting its
model, a split without both classes, an unwritable store): all problems are reported together and nothing runs. A
run that still fails is reported with its one-line error and the sweep goes on (``keep_going``); cells whose
resolved spec is the same run (e.g. they differ only in ``device``) are run once. A cell whose run is stored only
under older results versions (:mod:`fairfm.results.versions`) is served as ``stale``, or computed again with
``recompute_stale``.

Executors are registered by name (:func:`register_executor`); each receives the pending runs and yields one
:class:`SweepOutcome` per run as it finishes, in any order.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.results import Store
    from fairfm.spec import RunSpec, SweepSpec


@dataclass
class SweepOutcome:
    """What became of one cell: ``computed``, ``found`` (already in the store), ``stale`` (found, but stored under
    older results versions: ``run_id`` is the stale run's) or ``failed`` (with ``error``)."""

    index: int
    run_id: str
    status: str
    spec: dict[str, Any]
    seconds: float = 0.0
    error: str | None = None
    input_error: bool = False  # the failure was bad input (missing checkpoint, empty split …), not a crash
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PendingRun:
    index: int
    run_id: str
    spec: dict[str, Any]  # RunSpec.model_dump(mode="json"): plain data, picklable and sendable to any worker


ExecutorFn = Callable[..., Iterator[SweepOutcome]]
_EXECUTORS: dict[str, ExecutorFn] = {}


def register_executor(name: str) -> Callable[[ExecutorFn], ExecutorFn]:
    """Function decorator: ``fn(pending, store_path, *, workers, address) -> iterator of SweepOutcome``."""

    def decorate(fn: ExecutorFn) -> ExecutorFn:
        _EXECUTORS[name] = fn
        return fn

    return decorate


def list_executors() -> list[str]:
    return sorted(_EXECUTORS)


# ----------------------------------------------------------------------------------------------------- public


def plan(sweep: "SweepSpec", store: "Store", *, prepare: bool = True,
         recompute_stale: bool = False) -> tuple[list[SweepOutcome], list[PendingRun]]:  # fmt: skip
    """(cells already in the store, cells still to run) — duplicates of one run id are kept once. Datasets named
    by a registered name and a raw ``root`` are prepared into the store first (``prepare=False``: never write; a
    cell whose dataset is not prepared yet is pending with an empty run id). A cell stored only under older results
    versions is "stale" and counted as found, unless ``recompute_stale``.

    Every cell still to run is checked before any runs (:func:`fairfm.runner.preflight`: unknown model or dataset,
    a missing checkpoint or one that does not fit its model, a split without both classes, …) and the store's
    writability once; every problem is reported together, one line per cell, in one InputError. Preparing a dataset
    takes minutes, so when one is to be prepared a first pass that writes nothing checks every cell (those whose
    dataset is not prepared yet without their data) and the store, before anything is prepared."""
    if store.path.exists() and not store.path.is_dir():
        store.check_writable()  # a store that is a file: said once, not once per cell
    cells = list(sweep.expand())
    found, pending, problems = _plan_cells(cells, store, prepare=False, recompute_stale=recompute_stale)
    to_prepare = any(not run.run_id for run in pending)
    if pending and prepare:
        try:
            store.check_writable()
        except InputError as exc:
            problems.append(str(exc))
    _refuse(problems)
    if prepare and to_prepare:  # every cell passed its checks: prepare, then check what needed the data
        found, pending, problems = _plan_cells(cells, store, prepare=True, recompute_stale=recompute_stale)
        _refuse(problems)
    return found, pending


def _refuse(problems: list[str]) -> None:
    if problems:
        lines = "\n  ".join(problems)
        raise InputError(f"sweep: {len(problems)} problem(s) found before running, so nothing was run:\n  {lines}")


def _plan_cells(cells: list["RunSpec"], store: "Store", *, prepare: bool,
                recompute_stale: bool) -> tuple[list[SweepOutcome], list[PendingRun], list[str]]:  # fmt: skip
    """(found, pending, problems) of :func:`plan`; with ``prepare=False`` a cell whose dataset is not prepared yet
    has only the checks that need no data and is pending with an empty run id."""
    from fairfm.data.cache import is_prepared, resolve_dataset
    from fairfm.runner import preflight

    found: list[SweepOutcome] = []
    pending: list[PendingRun] = []
    seen: set[str] = set()
    problems: list[str] = []
    stale_index = None  # spec key -> stored runs, read once for every cell not found as it is
    for index, spec in enumerate(cells):
        try:
            # A dataset given by name is prepared here, once, before any worker could race to prepare it.
            spec, prepared = resolve_dataset(spec, store.path, prepare=prepare)
            if prepared is not None and not is_prepared(prepared.folder):  # only with prepare=False
                preflight(spec, store, check_store=False, check_data=False)
                pending.append(PendingRun(index, "", spec.model_dump(mode="json")))
                continue
            key = store.key(spec)  # fails fast, before any work, for a missing dataset or checkpoint
            run_id = key.run_id
            if run_id in seen:
                continue
            stored = store.exists(run_id)  # reads the run's files: once per cell
            stale = None
            if not stored and not recompute_stale:
                stale_index = store.spec_index() if stale_index is None else stale_index
                stale = store.find_stale(spec, _key=key, _index=stale_index)
            if not stored and stale is None:
                preflight(spec, store, check_store=False)
        except InputError as exc:
            problems.append(f"sweep cell {index} ({spec.model} · {spec.usage} · seed {spec.seed}): {exc}")
            continue
        seen.add(run_id)
        data = spec.model_dump(mode="json")
        if stored:
            found.append(SweepOutcome(index, run_id, "found", data))
        elif stale is not None:
            found.append(SweepOutcome(index, stale.run_id, "stale", data))
        else:
            pending.append(PendingRun(index, run_id, data))
    return found, pending, problems


def run_sweep(
    sweep: "SweepSpec",
    store: "Store",
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    keep_going: bool = True,
    progress: bool = True,
    on_outcome: Callable[[SweepOutcome], None] | None = None,
    recompute_stale: bool = False,
) -> list[SweepOutcome]:
    """Run every cell of ``sweep`` that is not in ``store`` yet; the outcomes in grid order.

    ``workers``: parallel runs for ``pool`` / ``ray`` (default: the CPU count for ``pool``, the cluster's for
    ``ray``); ``address``: a Ray cluster (``ray://host:10001`` or ``auto``), default a local one. Without
    ``keep_going`` the first failure stops the sweep (runs already finished stay stored). ``recompute_stale``:
    cells stored only under older results versions are computed again (otherwise served as ``stale``). With
    ``progress``, a line per finished run (its state and time) above the sweep's bar; the local executor's runs
    also show their own bars (training, bootstrap), the sweep's bar stepping aside while a cell is computed.
    """
    if executor not in _EXECUTORS:
        raise InputError(f"executor {executor!r} is not one of {', '.join(list_executors())}")
    if workers is not None and workers < 1:
        raise InputError(f"workers: {workers} — give at least 1")
    if address is not None and executor != "ray":
        raise InputError(f"--address {address!r} is for the ray executor (got executor {executor!r})")
    found, pending = plan(sweep, store, recompute_stale=recompute_stale)
    outcomes = list(found)
    for outcome in found:
        if on_outcome is not None:
            on_outcome(outcome)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[state]}")]  # fmt: skip
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("sweep", total=len(found) + len(pending), completed=len(found),
                            state=f"{len(found)} found")  # fmt: skip
        failed = 0
        if pending:
            # The local executor computes each cell in this process, so with progress on a run shows its own bars
            # (features, training, bootstrap); pool and Ray workers have no terminal: their line per cell says it.
            own_bars = progress and executor == "local"
            options = {"progress": True} if own_bars else {}
            stream = _EXECUTORS[executor](pending, store.path, workers=workers, address=address, **options)
            try:
                for outcome in _sweep_bar_aside(stream, bar) if own_bars else stream:
                    outcomes.append(outcome)
                    failed += outcome.status == "failed"
                    bar.update(task, advance=1, state=f"{failed} failed" if failed else "")
                    if progress:
                        bar.console.print(_cell_line(outcome), markup=False, soft_wrap=True)
                    if on_outcome is not None:
                        on_outcome(outcome)
                    if outcome.status == "failed" and not keep_going:
                        break
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # executors stop their workers when the stream is closed early
    return sorted(outcomes, key=lambda o: o.index)


def _sweep_bar_aside(stream: Iterator[SweepOutcome], bar: Any) -> Iterator[SweepOutcome]:
    """``stream``'s outcomes, with the sweep's bar hidden while each cell is computed: a run's own bars are live
    displays of other consoles, and two live displays on one terminal overwrite each other's lines."""
    iterator = iter(stream)
    while True:
        bar.live.transient = True
        bar.live.stop()
        try:
            outcome = next(iterator)
        except StopIteration:
            return
        finally:
            bar.live.transient = False
            bar.live.start()
        yield outcome


def _cell_line(outcome: SweepOutcome) -> str:
    spec = outcome.spec
    what = f"cell {outcome.index} ({spec.get('model')} · {spec.get('usage')} · seed {spec.get('seed')})"
    done = f"{outcome.status} in {outcome.seconds:.1f} s"
    return f"{what}: {done}" + (f" → run {outcome.run_id}" if outcome.status != "failed" else f": {outcome.error}")


# ----------------------------------------------------------------------------------------------------- one run


def run_one(spec_data: dict[str, Any], store_path: str, index: int = -1, *,
            progress: bool = False) -> SweepOutcome:  # fmt: skip
    """Execute one run (in whatever process an executor chose) and describe the outcome; never raises for a
    failed run, so one bad cell cannot take a sweep down. ``progress``: the run's own bars (an executor whose runs
    share the sweep's terminal)."""
    from fairfm.results import Store
    from fairfm.runner import execute
    from fairfm.spec import RunSpec

    started = time.perf_counter()
    run_id = ""
    try:
        spec = RunSpec.from_dict(spec_data, source="sweep")
        store = Store(store_path)
        run_id = store.run_id(spec)
        # A pending cell was planned to be computed (a stale run was only planned so with recompute_stale).
        result = execute(spec, store, progress=progress, recompute_stale=True)
        status = "computed" if result.computed else "found"
        return SweepOutcome(index, result.record.run_id, status, spec_data, time.perf_counter() - started)
    except InputError as exc:
        return SweepOutcome(index, run_id, "failed", spec_data, time.perf_counter() - started, error=str(exc),
                            input_error=True)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 — reported as this cell's failure; the other cells go on
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return SweepOutcome(index, run_id, "failed", spec_data, time.perf_counter() - started, error=message)


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _init_worker(threads: int) -> None:
    # Each worker gets its share of the cores: N workers × all cores each would oversubscribe the machine.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------- executors


@register_executor("local")
def _local(pending: Iterable[PendingRun], store_path: Path, *, workers: int | None = None,
           address: str | None = None, progress: bool = False) -> Iterator[SweepOutcome]:  # fmt: skip
    """One run after the other in this process (the simplest to debug); with ``progress`` each run shows its own
    bars (feature extraction, training, bootstrap)."""
    if workers not in (None, 1):
        raise InputError(f"workers: {workers} — the local executor runs one run at a time (use --executor pool)")
    for run in pending:
        yield run_one(run.spec, str(store_path), run.index, progress=progress)


@register_executor("pool")
def _pool(pending: Iterable[PendingRun], store_path: Path, *, workers: int | None = None,
          address: str | None = None) -> Iterator[SweepOutcome]:  # fmt: skip
    """A local process pool. Workers are spawned, not forked: a forked copy of a process that has started torch's
    thread pools can deadlock."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    runs = list(pending)
    workers = min(workers or os.cpu_count() or 1, len(runs))
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(_threads_per_worker(workers),))  # fmt: skip
    try:
        futures = [pool.submit(run_one, run.spec, str(store_path), run.index) for run in runs]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@register_executor("ray")
def _ray(pending: Iterable[PendingRun], store_path: Path, *, workers: int | None = None,
         address: str | None = None) -> Iterator[SweepOutcome]:  # fmt: skip
    """Ray tasks, on a local Ray instance or the cluster at ``address``. On a cluster the store folder (and the
    datasets and checkpoints the specs name) must be on a file system every node sees, and fairfm must be installed
    on every node."""
    try:
        import ray
    except ImportError:
        raise InputError("the ray executor needs Ray: pip install 'fairfm[sweep]' (or 'ray')") from None
    runs = list(pending)
    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is not None:
            options["address"] = address
        else:
            options["num_cpus"] = workers or os.cpu_count() or 1
        try:
            ray.init(**options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"ray executor: cannot start or reach Ray at {address or 'a local instance'} "
                             f"({str(exc).splitlines()[0]})") from None  # fmt: skip
    try:
        total_cpus = int(ray.cluster_resources().get("CPU", 1))
        parallel = min(workers or total_cpus, total_cpus)
        # Each task reserves its share of the CPUs, so Ray runs `parallel` of them at a time.
        cpus = max(total_cpus // max(parallel, 1), 1)
        remote = ray.remote(num_cpus=cpus, max_retries=0)(_ray_task)
        waiting = {remote.remote(run.spec, str(store_path), run.index, cpus): run for run in runs}
        while waiting:
            done, _ = ray.wait(list(waiting), num_returns=1)
            for ref in done:
                run = waiting.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as exc:  # noqa: BLE001 — a worker that died (killed, out of memory)
                    message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    yield SweepOutcome(run.index, run.run_id, "failed", run.spec, error=message)
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(spec_data: dict[str, Any], store_path: str, index: int, threads: int) -> SweepOutcome:
    _init_worker(threads)
    return run_one(spec_data, store_path, index)
