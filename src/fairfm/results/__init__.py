"""The results store: finished runs as Parquet tables under ``STORE/runs/<run_id>/``, a DuckDB catalogue over them,
run ids (spec + data + weights + results versions), resume without recomputation, stale runs, per-run locks, and
aggregation over seeds.

```python
from fairfm.results import Store
store = Store("fairfm_runs")
record = store.run(spec, compute)          # computes only if this spec (with this data) is not stored
store.aggregate(metric="auc_gap")          # mean ± std over seeds
```
"""

from fairfm.results.runid import (code_version, compute_run_id, config_id, data_version, results_version,
                                  samples_checksum, spec_key, split_config_id, weights_version)  # fmt: skip
from fairfm.results.versions import RESULTS_VERSIONS, run_components
from fairfm.results.store import (
    DEFAULT_STORE,
    METRIC_COLUMNS,
    STORE_ENV,
    RunKey,
    RunOutput,
    RunRecord,
    Store,
    default_store_path,
)

__all__ = [
    "Store", "RunRecord", "RunOutput", "RunKey", "default_store_path", "DEFAULT_STORE", "STORE_ENV", "METRIC_COLUMNS",
    "code_version", "compute_run_id", "config_id", "data_version", "weights_version", "results_version",
    "samples_checksum", "spec_key", "split_config_id", "RESULTS_VERSIONS", "run_components",
]  # fmt: skip
