"""The results store: one folder per finished run, Parquet tables, and a DuckDB catalogue over all of them.

Layout::

    STORE/runs/<run_id>/spec.json            the resolved spec (what was computed)
                       /predictions.parquet  the PredictionTable
                       /metrics.parquet      the MetricTable
                       /meta.json            versions, timings, seed, host
    STORE/tmp/<run_id>.<host>.<pid>.<rand>/  a run being written
    STORE/locks/<run_id>.lock                 held (host, pid, time) by the one process computing that run

A run folder is built in ``STORE/tmp`` and renamed into ``STORE/runs`` with one ``os.replace`` once every file is
complete, so a run killed at any point leaves no half-written result under ``runs/``; the orphaned temporary
folder is removed (and the run redone) the next time that run is asked for. A run folder damaged afterwards (a file
deleted or truncated by hand, a disk error) is not a run: it is listed as damaged by ``fairfm runs list``, and the
next time its run is asked for it is recomputed, the damaged folder moved aside to ``STORE/damaged/``.

Two processes asked for the same run (two sweeps on one store, a sweep and a ``fairfm run``) compute it once: the
first takes the run's lock file (created with ``O_EXCL``), the second waits for it and then finds the stored run. A
lock whose holder died is recovered: on this host when its pid no longer exists, on another host when its holder
stopped refreshing it (``LOCK_STALE_FOREIGN_S``).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd

from fairfm.errors import InputError
from fairfm.tableio import default_mode, host_tag, pid_alive, probe_writable
from fairfm.results.runid import (code_version, compute_run_id, config_id, data_version, results_version,
                                  samples_checksum, spec_key, split_config_id, weights_version)  # fmt: skip

if TYPE_CHECKING:
    import duckdb

    from fairfm.metrics import Report
    from fairfm.spec import RunSpec

DEFAULT_STORE = "fairfm_runs"
STORE_ENV = "FAIRFM_STORE"
SPEC_FILE, META_FILE = "spec.json", "meta.json"
PREDICTIONS_FILE, METRICS_FILE = "predictions.parquet", "metrics.parquet"
RUN_FILES = (SPEC_FILE, PREDICTIONS_FILE, METRICS_FILE, META_FILE)

PREDICTION_KEYS = ("run_id", "sample_id", "task", "split")
METRIC_COLUMNS = ("run_id", "task", "attribute", "group", "metric", "value", "ci_low", "ci_high", "n",
                  "threshold_policy", "note", "threshold_leaks_labels")  # fmt: skip
#: Columns added to DESIGN.md's contract, with the value of a table that predates them (docs/metrics.md).
_METRIC_EXTENSIONS = {"threshold_leaks_labels": False}
#: A foreign host's temporary folder is only presumed dead after this long (its pid cannot be checked from here).
STALE_FOREIGN_TMP_S = 24 * 3600
LOCKS_DIR = "locks"
#: A run's lock is refreshed (its mtime) this often while held, so that another host can tell a live holder ...
LOCK_HEARTBEAT_S = 30.0
#: ... from a dead one: a foreign host's lock not refreshed for this long is presumed abandoned.
LOCK_STALE_FOREIGN_S = 10 * 60.0

_METRICS_SQL_TYPES = {"value": "DOUBLE", "ci_low": "DOUBLE", "ci_high": "DOUBLE", "n": "BIGINT",
                      "threshold_leaks_labels": "BOOLEAN"}  # fmt: skip


def default_store_path() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


@dataclass
class RunOutput:
    """What a run function returns: the PredictionTable, the MetricTable (or a metrics ``Report``) and extra meta."""

    predictions: pd.DataFrame
    metrics: "pd.DataFrame | Report"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """A finished run in the store; the tables are read from Parquet on first access."""

    run_id: str
    path: Path
    spec: dict[str, Any]
    meta: dict[str, Any]
    _predictions: pd.DataFrame | None = field(default=None, repr=False)
    _metrics: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def predictions(self) -> pd.DataFrame:
        if self._predictions is None:
            self._predictions = _read_parquet(self.path / PREDICTIONS_FILE)
        return self._predictions

    @property
    def metrics(self) -> pd.DataFrame:
        if self._metrics is None:
            self._metrics = _read_parquet(self.path / METRICS_FILE)
        return self._metrics

    @property
    def created(self) -> str:
        return str(self.meta.get("created", ""))

    @property
    def stale(self) -> bool:
        """Made by code whose numbers differ from the running code's: its results versions are not the current
        ones of the components it uses (or were not recorded: a run stored before results versions existed)."""
        recorded = self.meta.get("results_versions")
        return recorded != results_version(self.spec)

    def run_spec(self) -> "RunSpec":
        """The stored spec as a :class:`RunSpec` again (execution fields such as ``device`` from meta.json)."""
        from fairfm.spec import EXECUTION_FIELDS, RunSpec

        execution = {name: self.meta[name] for name in EXECUTION_FIELDS if name in self.meta}
        return RunSpec.from_dict({**self.spec, **execution}, source=str(self.path / SPEC_FILE))


@dataclass(frozen=True)
class RunKey:
    """Everything that identifies a run: the resolved spec and the data, weights and results versions it was hashed
    with (``code``, the exact code version, is recorded but not hashed)."""

    run_id: str
    config_id: str
    resolved: dict[str, Any]
    code: dict[str, Any]
    data: str
    weights: str | None = None
    results: dict[str, int] = field(default_factory=dict)
    spec_key: str = ""  # the run id without the results versions: how a stale run of this spec is found
    split_config_id: str = ""  # the config id without the split seed either


class Store:
    """Finished runs under ``path`` (default ``$FAIRFM_STORE`` or ``./fairfm_runs``)."""

    def __init__(self, path: str | os.PathLike | None = None, *, code: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.runs_dir = self.path / "runs"
        self.tmp_dir = self.path / "tmp"
        # ``code`` overrides the detected code version (tests; reproducing a run made by another version).
        self._code = dict(code) if code is not None else None

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- identity --------------------------------------------------------------------------------------------
    def key(self, spec: "RunSpec | Mapping[str, Any]") -> RunKey:
        spec = _as_spec(spec)
        resolved = spec.resolve()
        code = self._code if self._code is not None else code_version()
        data = data_version(resolved["dataset"])
        weights = weights_version(resolved["checkpoint"])
        results = results_version(resolved)
        return RunKey(compute_run_id(resolved, data, weights, results), config_id(resolved, data, weights, results),
                      resolved, code, data, weights, results, spec_key(resolved, data, weights),
                      split_config_id(resolved, spec.manifest(), weights, results))  # fmt: skip

    def run_id(self, spec: "RunSpec | Mapping[str, Any]") -> str:
        return self.key(spec).run_id

    # -- finding and reading ---------------------------------------------------------------------------------
    def exists(self, run_id: str) -> bool:
        """Whether ``run_id`` is stored and complete (a damaged folder is not a run: it is recomputed)."""
        return (self.runs_dir / run_id / META_FILE).is_file() and self.damage(run_id) is None

    def damage(self, run_id: str) -> str | None:
        """Why ``runs/<run_id>`` is not a readable run (a file missing, not valid JSON or Parquet), or None when
        it is complete — or absent. Cheap: JSON files are parsed, Parquet files only have their footer read."""
        import pyarrow.parquet as pq

        folder = self.runs_dir / run_id
        if not folder.exists():
            return None
        if not folder.is_dir():
            return "not a folder"
        for name in RUN_FILES:
            if not (folder / name).is_file():
                return f"no {name}"
        for name in (SPEC_FILE, META_FILE):
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                return f"{name} cannot be read ({exc})"
        for name in (PREDICTIONS_FILE, METRICS_FILE):
            try:
                pq.read_metadata(folder / name)
            except Exception as exc:  # noqa: BLE001 — pyarrow raises ArrowInvalid / OSError for a damaged file
                return f"{name} is not a readable Parquet file ({_first_line(exc)})"
        return None

    def damaged(self) -> list[tuple[Path, str]]:
        """Every damaged run folder and why (``fairfm runs list`` reports them with their path)."""
        self._check_is_folder()
        if not self.runs_dir.is_dir():
            return []
        found = []
        for folder in sorted(p for p in self.runs_dir.iterdir() if not p.name.startswith(".")):
            reason = self.damage(folder.name)
            if reason is not None:
                found.append((folder, reason))
        return found

    def check_writable(self) -> None:
        """Fail before any work when a finished run could not be stored: the store is a file, or it (or a folder
        a run writes to: runs/, tmp/, heads/, features/, masks/) is not writable — probed by a real write."""
        self._check_is_folder()
        probe_writable(self.path, f"store {self.path}")
        for sub in ("runs", "tmp", "heads", "features", "masks", "datasets"):
            if (self.path / sub).exists():
                probe_writable(self.path / sub, f"store {self.path}")

    def _check_is_folder(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"store {self.path}: is a file, not a folder (--store / $FAIRFM_STORE names the "
                             "results folder)")  # fmt: skip

    def find(self, spec: "RunSpec | Mapping[str, Any]") -> RunRecord | None:
        """The stored run of ``spec`` (same spec, data, weights and results versions), or None."""
        run_id = self.run_id(spec)
        return self._read(run_id) if self.exists(run_id) else None

    def find_stale(self, spec: "RunSpec | Mapping[str, Any]", *, _key: RunKey | None = None,
                   _index: Mapping[str, list[tuple[str, str]]] | None = None) -> RunRecord | None:  # fmt: skip
        """The newest stored run of ``spec`` (same spec, data and weights) made under other results versions — a
        stale result — or None. Only meaningful when :meth:`find` found nothing. ``_index``: a
        :meth:`spec_index` built once for many look-ups (a sweep's plan)."""
        key = _key or self.key(_as_spec(spec))
        index = self.spec_index() if _index is None else _index
        candidates = [entry for entry in index.get(key.spec_key, []) if entry[1] != key.run_id]
        return self._read(max(candidates)[1]) if candidates else None

    def spec_index(self) -> dict[str, list[tuple[str, str]]]:
        """spec key -> [(created, run id)] of every stored run (one read of every meta.json)."""
        index: dict[str, list[tuple[str, str]]] = {}
        for folder in self._run_dirs():
            try:
                meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue  # a damaged folder is never served
            if meta.get("spec_key"):
                index.setdefault(str(meta["spec_key"]), []).append((str(meta.get("created", "")), folder.name))
        return index

    def load(self, run_id: str) -> RunRecord:
        """A run by id or by an unambiguous prefix of it (as in ``fairfm runs show``)."""
        run_id = str(run_id).strip()
        if run_id and self.exists(run_id):
            return self._read(run_id)
        reason = self.damage(run_id) if run_id else None
        if reason is not None:
            raise InputError(_damaged_message(self.runs_dir / run_id, reason))
        matches = [p.name for p in self._run_dirs() if run_id and p.name.startswith(run_id)]
        if len(matches) == 1:
            return self._read(matches[0])
        if len(matches) > 1:
            shown = ", ".join(sorted(matches)[:5]) + (f", … ({len(matches)} in all)" if len(matches) > 5 else "")
            raise InputError(f"run id {run_id!r} is ambiguous in {self.path}: matches {shown}")
        count = len(self._run_dirs())
        raise InputError(f"no run {run_id!r} in {self.path} ({count} run(s); see 'fairfm runs list')")

    def list(self) -> list[RunRecord]:
        """Every finished run, oldest first."""
        records = [self._read(p.name) for p in self._run_dirs()]
        return sorted(records, key=lambda r: (r.created, r.run_id))

    def __len__(self) -> int:
        return len(self._run_dirs())

    def _run_dirs(self) -> list[Path]:
        self._check_is_folder()
        if not self.runs_dir.is_dir():
            return []
        return sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and (p / META_FILE).is_file()
                      and self.damage(p.name) is None)  # fmt: skip

    def _read(self, run_id: str) -> RunRecord:
        folder = self.runs_dir / run_id
        docs = []
        for name in (SPEC_FILE, META_FILE):
            try:
                docs.append(json.loads((folder / name).read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{folder / name}: cannot be read ({exc})") from None
        return RunRecord(run_id=run_id, path=folder, spec=docs[0], meta=docs[1])

    # -- writing ---------------------------------------------------------------------------------------------
    def write(
        self,
        spec: "RunSpec | Mapping[str, Any]",
        predictions: pd.DataFrame,
        metrics: "pd.DataFrame | Report",
        meta: Mapping[str, Any] | None = None,
        *,
        _key: RunKey | None = None,
    ) -> str:
        """Store a finished run atomically and return its id. A run that is already stored is kept as it is."""
        spec = _as_spec(spec)
        key = _key or self.key(spec)
        if self.exists(key.run_id):
            return key.run_id
        predictions = _prediction_table(predictions, key.run_id)
        metric_table = _metric_table(metrics, key.run_id)
        full_meta = self._meta(spec, key, meta)
        self._write_folder(key.run_id, key.resolved, predictions, metric_table, full_meta)
        return key.run_id

    def _write_folder(self, run_id: str, resolved: Mapping[str, Any], predictions: pd.DataFrame,
                      metric_table: pd.DataFrame, full_meta: Mapping[str, Any]) -> None:  # fmt: skip
        self._clean_stale(run_id)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{run_id}.{host_tag()}.{os.getpid()}.", dir=self.tmp_dir))
        try:
            predictions.to_parquet(tmp / PREDICTIONS_FILE, index=False)
            metric_table.to_parquet(tmp / METRICS_FILE, index=False)
            (tmp / SPEC_FILE).write_text(_dumps(resolved), encoding="utf-8")
            (tmp / META_FILE).write_text(_dumps(full_meta), encoding="utf-8")
            for name in RUN_FILES:
                _fsync(tmp / name)
            os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it private; a run is shared like any folder
            self._move_damaged_aside(run_id)
            try:
                os.replace(tmp, self.runs_dir / run_id)
            except OSError:
                if not self.exists(run_id):  # not simply a concurrent writer that finished the same run first
                    raise
            _fsync(self.runs_dir, directory=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def run_derived(self, run_id: str, document: Mapping[str, Any], fn: Callable[[], "RunOutput | tuple"]) -> RunRecord:
        """A run computed from other stored runs (an ensemble), not from a RunSpec: ``document`` is its spec.json
        (what identifies it; ``usage`` names its kind, e.g. "ensemble") and ``run_id`` the caller's hash of it.
        Found if stored; otherwise ``fn()`` is computed under the run's lock and written like any run (atomically),
        so every report and query treats it like any other run."""
        if self.exists(run_id):
            return self._read(run_id)
        with self.lock(run_id):
            if self.exists(run_id):
                return self._read(run_id)
            started = time.perf_counter()
            output = _as_output(fn())
            elapsed = time.perf_counter() - started
            predictions = _prediction_table(output.predictions, run_id)
            metric_table = _metric_table(output.metrics, run_id)
            resolved = dict(document)
            meta: dict[str, Any] = {
                "run_id": run_id, "config_id": run_id, "split_config_id": run_id,
                "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                "results_versions": results_version(resolved),
                "code": self._code if self._code is not None else code_version(),
                "seed": resolved.get("seed"), "host": socket.gethostname(), "python": platform.python_version(),
                "platform": platform.platform(),
            }  # fmt: skip
            for name, value in dict(output.meta).items():
                if name in meta and name not in ("seed",):
                    raise InputError(f"meta: {name!r} is set by the store and cannot be given")
                meta[name] = value
            meta["timings"] = {**dict(meta.get("timings") or {}), "run_s": round(elapsed, 3)}
            self._write_folder(run_id, resolved, predictions, metric_table, meta)
        return self._read(run_id)

    def run(
        self,
        spec: "RunSpec | Mapping[str, Any]",
        fn: Callable[["RunSpec"], "RunOutput | tuple"],
    ) -> RunRecord:
        """The stored result of ``spec`` if there is one; otherwise ``fn(spec)`` is computed and stored.

        ``fn`` returns a :class:`RunOutput` or a tuple ``(predictions, metrics[, meta])``; ``metrics`` may be a
        MetricTable or a :class:`fairfm.metrics.Report`. A finished run is never recomputed.
        """
        spec = _as_spec(spec)
        key = self.key(spec)
        if self.exists(key.run_id):
            return self._read(key.run_id)
        with self.lock(key.run_id):
            if self.exists(key.run_id):  # another process computed it while this one waited for the lock
                return self._read(key.run_id)
            self._clean_stale(key.run_id)
            started = time.perf_counter()
            output = _as_output(fn(spec))
            elapsed = time.perf_counter() - started
            meta = dict(output.meta)
            meta["timings"] = {**dict(meta.get("timings") or {}), "run_s": round(elapsed, 3)}
            self.write(spec, output.predictions, output.metrics, meta, _key=key)
        return self._read(key.run_id)

    # -- per-run locks ---------------------------------------------------------------------------------------
    @contextmanager
    def lock(self, run_id: str, *, poll_s: float = 0.2) -> Iterator[None]:
        """Hold ``STORE/locks/<run_id>.lock`` (waiting while another live process holds it)."""
        path = self.path / LOCKS_DIR / f"{run_id}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"store: cannot create {path.parent} ({exc.strerror or exc}); is {self.path} "
                             "writable?") from None  # fmt: skip
        holder = json.dumps({"host": host_tag(), "pid": os.getpid(), "time": time.time(),
                             "thread": threading.get_ident()})  # fmt: skip
        wait = poll_s
        while True:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, default_mode())
            except PermissionError as exc:
                raise InputError(f"store: cannot create {path} ({exc.strerror}); is {self.path} writable?") from None
            except FileExistsError:
                if not _recover_abandoned_lock(path):
                    time.sleep(wait)
                    wait = min(wait * 1.5, 2.0)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(holder)
            break
        stop = threading.Event()
        beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name=f"lock-{run_id}")
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            try:
                if path.read_text(encoding="utf-8") == holder:  # never remove a lock another process took over
                    path.unlink()
            except OSError:
                pass

    def _move_damaged_aside(self, run_id: str) -> None:
        """A damaged folder in the way of a run is moved to ``STORE/damaged/<run_id>.<time>`` (kept for a look,
        never served), so the recomputed run can take its place — instead of failing on every rerun."""
        folder = self.runs_dir / run_id
        if folder.exists() and self.damage(run_id) is not None:
            aside = self.path / "damaged" / f"{run_id}.{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%f')}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder, aside)

    def clean(self) -> list[Path]:
        """Remove every stale temporary folder (from runs killed while being written); return what was removed."""
        return self._clean_stale(None)

    def _clean_stale(self, run_id: str | None) -> list[Path]:
        if not self.tmp_dir.is_dir():
            return []
        removed = []
        for folder in self.tmp_dir.iterdir():
            parts = folder.name.split(".")
            if len(parts) < 4 or (run_id is not None and parts[0] != run_id):
                continue
            host, pid = parts[1], parts[2]
            if host == host_tag():
                stale = not (pid.isdigit() and pid_alive(int(pid)))
            else:
                stale = time.time() - folder.stat().st_mtime > STALE_FOREIGN_TMP_S
            if stale:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    def _meta(self, spec: "RunSpec", key: RunKey, extra: Mapping[str, Any] | None) -> dict[str, Any]:
        manifest = spec.manifest()
        samples_sha256 = samples_checksum(key.resolved["dataset"])
        recorded = manifest.get("samples_sha256")  # written by prepare; absent in folders made by hand or earlier
        packages = {name: getattr(sys.modules[name], "__version__", None)
                    for name in ("numpy", "pandas", "torch", "timm", "open_clip", "transformers", "peft")
                    if name in sys.modules}  # fmt: skip
        meta: dict[str, Any] = {
            "run_id": key.run_id,
            "config_id": key.config_id,
            "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "spec_key": key.spec_key,
            "split_config_id": key.split_config_id,
            "results_versions": key.results,
            "code": key.code,
            "data": {"dataset": manifest.get("dataset"), "dir": key.resolved["dataset"], "sha256": key.data,
                     "samples_sha256": samples_sha256,
                     "edited_after_prepare": None if recorded is None else recorded != samples_sha256,
                     "dataset_version": manifest.get("dataset_version")},  # fmt: skip
            "weights": key.weights,
            "seed": spec.seed,
            "device": spec.device,
            "trust_checkpoint": spec.trust_checkpoint,
            "host": socket.gethostname(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": packages,
        }
        for name, value in (extra or {}).items():
            if name in ("run_id", "config_id", "spec_key", "split_config_id", "results_versions", "code", "data",
                        "weights"):
                raise InputError(f"meta: {name!r} is set by the store and cannot be given")
            meta[name] = value
        return meta

    # -- catalogue -------------------------------------------------------------------------------------------
    def runs_frame(self, records: Sequence[RunRecord] | None = None) -> pd.DataFrame:
        """One row per run: id, config id (the run id without the seed), dataset, model, usage, method, seed, …"""
        rows = [_run_row(r) for r in (self.list() if records is None else records)]
        return pd.DataFrame(rows, columns=list(_RUN_COLUMNS))

    def connect(self) -> "duckdb.DuckDBPyConnection":
        """An in-memory DuckDB connection with three views over the store: ``runs``, ``metrics``, ``predictions``.

        The views are built from one listing of the finished runs, so they agree with each other even while
        other processes add runs.
        """
        import duckdb
        import pyarrow as pa

        records = self.list()
        con = duckdb.connect(":memory:")
        runs = self.runs_frame(records)
        con.register("runs_arrow", pa.Table.from_pandas(runs, preserve_index=False))
        con.execute("CREATE VIEW runs AS SELECT * FROM runs_arrow")
        for view, name, empty in (("metrics", METRICS_FILE, _EMPTY_METRICS), ("predictions", PREDICTIONS_FILE,
                                                                               _EMPTY_PREDICTIONS)):  # fmt: skip
            files = [str(r.path / name) for r in records]
            if files:
                listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
            else:
                con.execute(f"CREATE VIEW {view} AS SELECT * FROM ({empty}) WHERE false")
        return con

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run SQL over the views ``runs``, ``metrics`` and ``predictions``; errors name the query."""
        import duckdb

        con = self.connect()
        try:
            return con.execute(sql, list(params or [])).df()
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"query {sql.strip()[:80]!r}: {first}") from None
        finally:
            con.close()

    def metrics(self, **filters: Any) -> pd.DataFrame:
        """The MetricTable rows of every run joined with the run's description, filtered by equality.

        ``store.metrics(model="dinov2", metric=["auc", "auc_gap"], attribute="sex")``: a list means "any of",
        None means "missing" (e.g. ``method=None``).
        """
        where, params = _where(filters, _METRIC_VIEW_COLUMNS)
        return self.query(f"SELECT * FROM ({_METRIC_VIEW}) {where} ORDER BY created, run_id, task, attribute, "
                          f"\"group\", metric", params)  # fmt: skip

    def aggregate(self, *, over: str = "seed", **filters: Any) -> pd.DataFrame:
        """Mean ± std over seeds per (dataset, model, usage, method, task, attribute, group, metric).

        ``over="seed"`` (default): runs are grouped by ``config_id`` — runs that differ *only* by the training seed
        (same spec otherwise, the same split seed, data and results versions). ``over="split_seed"``: grouped by
        ``split_config_id`` — runs of one release that differ by split seed and/or seed (the spread over splits).
        ``std`` is the sample standard deviation (ddof = 1; NaN for one run); missing values (NaN) are skipped and
        ``n_seeds`` counts the runs that have a value. Filters as in :meth:`metrics`.
        """
        keys = {"seed": "config_id", "split_seed": "split_config_id"}
        if over not in keys:
            raise InputError(f"aggregate over {over!r}: choose one of {', '.join(keys)}")
        key = keys[over]
        where, params = _where(filters, _METRIC_VIEW_COLUMNS)
        sql = f"""
            SELECT dataset, model, usage, method, task, attribute, "group", metric,
                   avg(v) AS mean, stddev_samp(v) AS std, count(v) AS n_seeds,
                   list(seed ORDER BY split_seed, seed) AS seeds,
                   list(split_seed ORDER BY split_seed, seed) AS split_seeds, {key} AS config_id,
                   bool_or(stale) AS stale
            FROM (SELECT *, CASE WHEN isnan(value) THEN NULL ELSE value END AS v FROM ({_METRIC_VIEW}) {where})
            GROUP BY {key}, dataset, model, usage, method, task, attribute, "group", metric
            ORDER BY dataset, model, usage, method NULLS FIRST, {key}, task, attribute, "group", metric
        """
        return self.query(sql, params)


# ---------------------------------------------------------------------------------------------------------------
# Helpers

_RUN_COLUMNS = ("run_id", "config_id", "split_config_id", "dataset", "dataset_dir", "model", "checkpoint", "usage",
                "method", "split", "split_seed", "seed", "stale", "tasks", "attributes", "threshold", "bootstrap", "hparams", "created", "run_s", "fairfm",
                "git", "data_sha256")  # fmt: skip
_METRIC_VIEW = ("SELECT m.*, r.config_id, r.split_config_id, r.dataset, r.model, r.usage, r.method, r.split_seed, "
                "r.seed, r.stale, r.created FROM metrics m JOIN runs r USING (run_id)")  # fmt: skip
_METRIC_VIEW_COLUMNS = (*METRIC_COLUMNS, "config_id", "split_config_id", "dataset", "model", "usage", "method",
                        "split_seed", "seed", "stale", "created")  # fmt: skip
_EMPTY_METRICS = "SELECT " + ", ".join(
    f"CAST(NULL AS {_METRICS_SQL_TYPES.get(c, 'VARCHAR')}) AS \"{c}\"" for c in METRIC_COLUMNS
)
_EMPTY_PREDICTIONS = ("SELECT CAST(NULL AS VARCHAR) AS run_id, CAST(NULL AS VARCHAR) AS sample_id, "
                      "CAST(NULL AS VARCHAR) AS task, CAST(NULL AS VARCHAR) AS split, CAST(NULL AS DOUBLE) AS y_true, "
                      "CAST(NULL AS DOUBLE) AS y_score")  # fmt: skip


def _run_row(record: RunRecord) -> dict[str, Any]:
    spec, meta = record.spec, record.meta
    data = meta.get("data") or {}
    code = meta.get("code") or {}
    return {
        "run_id": record.run_id,
        "config_id": meta.get("config_id"),
        "split_config_id": meta.get("split_config_id") or meta.get("config_id"),
        "dataset": data.get("dataset") or Path(str(spec.get("dataset", ""))).name,
        "dataset_dir": spec.get("dataset"),
        "model": spec.get("model"),
        "checkpoint": spec.get("checkpoint"),
        "usage": spec.get("usage"),
        "method": spec.get("method"),
        "split": spec.get("split"),
        "split_seed": spec.get("split_seed"),
        "seed": spec.get("seed"),
        "stale": record.stale,
        "tasks": ",".join(spec.get("tasks") or []),
        "attributes": ",".join(spec.get("attributes") or []),
        "threshold": spec.get("threshold"),
        "bootstrap": spec.get("bootstrap"),
        "hparams": json.dumps(spec.get("hparams") or {}, sort_keys=True),
        "created": record.created,
        "run_s": (meta.get("timings") or {}).get("run_s"),
        "fairfm": code.get("fairfm"),
        "git": code.get("git"),
        "data_sha256": data.get("sha256"),
    }


def _where(filters: Mapping[str, Any], columns: Iterable[str]) -> tuple[str, list[Any]]:
    allowed = list(columns)
    clauses, params = [], []
    for name, value in filters.items():
        if name not in allowed:
            raise InputError(f"unknown filter {name!r}; filter on: {', '.join(allowed)}")
        column = f'"{name}"'
        if value is None:
            clauses.append(f"{column} IS NULL")
        elif isinstance(value, (list, tuple, set, frozenset)):
            values = list(value)
            if not values:
                clauses.append("false")
                continue
            clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params.extend(values)
        else:
            clauses.append(f"{column} = ?")
            params.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _as_spec(spec: "RunSpec | Mapping[str, Any]") -> "RunSpec":
    from fairfm.spec import RunSpec

    if isinstance(spec, RunSpec):
        return spec
    if isinstance(spec, Mapping):
        return RunSpec.from_dict(spec)
    raise TypeError(f"expected a RunSpec or a mapping, got {type(spec).__name__}")


def _as_output(result: Any) -> RunOutput:
    if isinstance(result, RunOutput):
        return result
    if isinstance(result, tuple) and len(result) in (2, 3):
        return RunOutput(*result)
    raise TypeError(f"a run function must return RunOutput or (predictions, metrics[, meta]), "
                    f"got {type(result).__name__}")


def _prediction_table(predictions: pd.DataFrame, run_id: str) -> pd.DataFrame:
    if not isinstance(predictions, pd.DataFrame):
        raise TypeError(f"predictions must be a DataFrame (the PredictionTable), got {type(predictions).__name__}")
    table = predictions.drop(columns=["run_id"], errors="ignore").copy()
    table.insert(0, "run_id", run_id)
    missing = [c for c in PREDICTION_KEYS if c not in table.columns]
    if "dice" not in table.columns:  # segmentation tables carry per-sample dice/iou instead of y_true/y_score
        missing += [c for c in ("y_true", "y_score") if c not in table.columns]
    if missing:
        raise InputError(f"PredictionTable: missing column(s) {', '.join(missing)} "
                         f"(columns: {', '.join(map(str, predictions.columns))})")  # fmt: skip
    if table.empty:
        raise InputError("PredictionTable: no rows")
    # Canonical column order: keys, outcome columns, the sample's groups, then anything else (e.g. mask paths).
    head = [c for c in (*PREDICTION_KEYS, "y_true", "y_score", "dice", "iou") if c in table.columns]
    groups = [c for c in table.columns if str(c).startswith("group_")]
    table = table[head + groups + [c for c in table.columns if c not in head and c not in groups]]
    if table.duplicated(["sample_id", "task", "split"]).any():
        row = table[table.duplicated(["sample_id", "task", "split"], keep=False)].iloc[0]
        raise InputError(f"PredictionTable: sample {row['sample_id']!r} appears twice for task {row['task']!r} "
                         f"in split {row['split']!r}")  # fmt: skip
    return table


def _metric_table(metrics: Any, run_id: str) -> pd.DataFrame:
    if hasattr(metrics, "to_metric_table"):
        metrics = metrics.to_metric_table(run_id)
    if not isinstance(metrics, pd.DataFrame):
        raise TypeError(f"metrics must be a MetricTable DataFrame or a Report, got {type(metrics).__name__}")
    missing = [c for c in METRIC_COLUMNS if c not in metrics.columns and c not in _METRIC_EXTENSIONS]
    if missing:
        raise InputError(f"MetricTable: missing column(s) {', '.join(missing)}")
    metrics = metrics.assign(**{c: v for c, v in _METRIC_EXTENSIONS.items() if c not in metrics.columns})
    table = metrics.loc[:, list(METRIC_COLUMNS)].copy()
    table["run_id"] = run_id
    for column in ("value", "ci_low", "ci_high"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("float64")
    table["n"] = pd.to_numeric(table["n"], errors="coerce").astype("Int64")
    for column in ("run_id", "task", "attribute", "group", "metric", "threshold_policy", "note"):
        table[column] = table[column].astype("string").fillna("")
    table["threshold_leaks_labels"] = table["threshold_leaks_labels"].fillna(False).astype(bool)
    return table


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(LOCK_HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:
            return


def _recover_abandoned_lock(path: Path) -> bool:
    """Remove ``path`` if its holder is dead (this host: its pid is gone; another host: not refreshed for
    ``LOCK_STALE_FOREIGN_S``); True when the lock is gone and may be taken now."""
    try:
        text = path.read_text(encoding="utf-8")
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True  # released meanwhile
    except OSError:
        return False
    try:
        holder = json.loads(text)
        host, pid = str(holder["host"]), int(holder["pid"])
    except (ValueError, KeyError, TypeError):
        # Being written this instant, or garbage: garbage older than a heartbeat can be nobody's live lock.
        host, pid = "", 0
        if age < LOCK_HEARTBEAT_S:
            return False
    if host == host_tag():
        if pid_alive(pid):
            return False
    elif host and age < LOCK_STALE_FOREIGN_S:
        return False
    # Take the dead lock aside with an atomic rename (only one recovering process can win it), then check that what
    # was taken is the dead holder's lock and not one that a faster process has just created in its place.
    aside = path.with_name(f"{path.name}.{host_tag()}.{os.getpid()}.{threading.get_ident()}.dead")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        if aside.read_text(encoding="utf-8") != text:
            try:
                os.link(aside, path)  # put the live lock back (fails only if yet another one appeared)
            except OSError:
                pass
            return False
    finally:
        aside.unlink(missing_ok=True)
    return True


def _damaged_message(folder: Path, reason: str) -> str:
    return (f"run folder {folder} is damaged ({reason}): it is recomputed the next time its run is asked for "
            "(fairfm run / fairfm sweep; the damaged folder is moved to STORE/damaged/), or delete that folder")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 — pyarrow raises ArrowInvalid / OSError for a damaged file
        raise InputError(_damaged_message(path.parent, f"{path.name}: {_first_line(exc)}")) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dumps(document: Any) -> str:
    return json.dumps(document, indent=2, sort_keys=False, ensure_ascii=False, default=str) + "\n"


def _fsync(path: Path, directory: bool = False) -> None:
    # Durability against power loss, not only against a killed process; best effort where unsupported.
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
