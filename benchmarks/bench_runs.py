"""Benchmark: ``fairfm demo`` end to end from an empty store (issue 5's target: ≤ 5 minutes on 2 cores), the same
demo again (every run found in the store), and a small sweep on each executor (in-process, process pool, Ray).

    .venv/bin/python benchmarks/bench_runs.py [--write BENCHMARKS.md]

Each measurement is one subprocess of the installed ``fairfm`` command in a fresh temporary folder, so imports,
model construction and worker start-up are all counted, as a user would see them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, write_section  # noqa: E402

FAIRFM = str(Path(sys.executable).parent / "fairfm")


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "FAIRFM_STORE": str(folder / "store"), "FAIRFM_HOME": str(folder / "home")}
        demo_first = timed([FAIRFM, "demo", "--out", str(folder / "demo")], folder, env)
        demo_again = timed([FAIRFM, "demo", "--out", str(folder / "demo")], folder, env)

        # The demo's own linear-probe spec of the tiny CLIP-ViT (its YAML under DEMO/specs), swept over 6 seeds.
        specs = [yaml.safe_load(path.read_text()) for path in sorted((folder / "demo" / "specs").glob("*.yaml"))]
        probe = next(spec for spec in specs if spec["model"] == "clip" and spec["usage"] == "linear_probe")
        sweep = {**probe, "seeds": [0, 1, 2, 3, 4, 5]}
        sweep.pop("seed", None)
        (folder / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        sweeps = {}
        for executor in ("local", "pool", "ray"):
            store = folder / f"store_{executor}"
            extra = [] if executor == "local" else ["--workers", "2"]
            sweeps[executor] = timed([FAIRFM, "sweep", str(folder / "sweep.yaml"), "--store", str(store), "--quiet",
                                      "--executor", executor, *extra], folder, env)  # fmt: skip

    body = [
        "## Runs, the demo and sweeps (issue 5)",
        "",
        f"Machine: {describe(('torch', 'timm', 'open_clip_torch', 'ray'))}.",
        "",
        "| what | wall time |",
        "|---|---|",
        f"| `fairfm demo`, empty store (target ≤ 5 min) | {demo_first:.1f} s |",
        f"| `fairfm demo` again (every run found in the store) | {demo_again:.1f} s |",
    ]
    for executor, seconds in sweeps.items():
        workers = "" if executor == "local" else ", 2 workers"
        body.append(f"| `fairfm sweep` 6 runs (the demo's CLIP-ViT linear probe × 6 seeds), `{executor}`{workers} | "
                    f"{seconds:.1f} s |")
    body += ["", "Each line is one `fairfm` subprocess (imports, model loading and worker start-up included). On 2 "
             "cores a pool of 2 workers mostly buys overlap of start-up and I/O; each worker gets one thread. The "
             "second demo computes no run, but rebuilds each run's report (1,000 bootstrap resamples) from its "
             "stored predictions to print the comparison — deterministic, so identical to the stored metrics."]
    text = "\n".join(body)
    print(text)
    if args.write:
        write_section(args.write, "runs", text)


if __name__ == "__main__":
    main()
