"""Benchmark: ``fairfm.data.prepare`` of CheXpert from its real 223,414-row ``train.csv`` (no images needed).

The table is torchxrayvision's bundled copy (``chexpert_train.csv.gz``, DATASETS.md §8), decompressed into the
release layout in a temporary folder at run time (never copied into the repository). Target: ≤ 10 s on 2 cores.

    .venv/bin/python benchmarks/bench_prepare_chexpert.py [--repeats 3] [--split patient] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, write_section  # noqa: E402


def chexpert_table() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")  # locates the data files without importing torch
    if spec is None or spec.origin is None:
        raise SystemExit("torchxrayvision is not installed (pip install --no-deps torchxrayvision)")
    return Path(spec.origin).parent / "data" / "chexpert_train.csv.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="patient")
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file")
    args = parser.parse_args()

    from fairfm.data.prepare import prepare

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "raw"
        train = root / "CheXpert-v1.0-small" / "train.csv"
        train.parent.mkdir(parents=True)
        with gzip.open(chexpert_table(), "rb") as src, train.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        times = []
        for i in range(args.repeats):
            out = Path(tmp) / f"prepared{i}"
            started = time.perf_counter()
            manifest = prepare("chexpert", root, out, split=args.split, seed=0)
            times.append(time.perf_counter() - started)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        line = (f"prepare chexpert (real train.csv, {manifest['n_samples']:,} rows, {manifest['n_patients']:,} "
                f"patients, split={args.split}) on {cores} cores: median {statistics.median(times):.2f} s, "
                f"min {min(times):.2f} s over {args.repeats} runs (target ≤ 10 s)")
    print(line)
    machine = describe(("numpy", "pandas", "pyarrow"))
    print(f"machine: {machine}")
    if args.write is not None:
        body = (f"### `fairfm datasets prepare chexpert` (issue 3)\n\n"
                f"Real CheXpert `train.csv` (torchxrayvision's copy), no images, "
                f"`prepare('chexpert', …, split='{args.split}', seed=0)` incl. checksums and Parquet/JSON writing.\n\n"
                f"| rows | patients | median | min | runs | target |\n|---:|---:|---:|---:|---:|---:|\n"
                f"| {manifest['n_samples']:,} | {manifest['n_patients']:,} | {statistics.median(times):.2f} s | "
                f"{min(times):.2f} s | {args.repeats} | ≤ 10 s |\n\nMachine: {machine}\n")
        write_section(args.write, "bench-prepare-chexpert", body)


if __name__ == "__main__":
    main()
