"""Feature-extraction speed against the CPU roofline: ViT-B/16 and ResNet-50 (random weights, 224 px).

For each model, in its own process (so peak memory is per model):
  * FLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass;
  * the machine's fp32 matmul FLOP/s, measured in the same process with the same thread count;
  * roofline images/s = matmul FLOP/s ÷ FLOPs per image;
  * encoder images/s on preprocessed batches (``Encoder.encode_image``, inference mode, channels-last for CNNs),
    each timed batch paired with a GEMM measurement just before and after it (the median ratio is reported, so a
    host shared with other machines slows both sides of a pair alike);
  * end-to-end images/s of ``extract_features`` on synthetic PNGs (decoding in DataLoader workers, cache writes);
  * peak resident memory of the process (and of its decoding workers).

Run: ``.venv/bin/python benchmarks/bench_features.py [--images 64] [--batch-size 32] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {"vit_b16": "vit_b16_imagenet", "resnet50": "resnet50_scratch"}


def matmul_flops(threads: int, sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 5) -> float:
    """Peak fp32 GEMM FLOP/s: best over square sizes and repeats — the roofline's compute ceiling."""
    import torch

    torch.set_num_threads(threads)
    peak = 0.0
    for size in sizes:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            peak = max(peak, 2 * size**3 / (time.perf_counter() - start))
    return peak


def flops_per_image(encoder) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, encoder.preprocess.size, encoder.preprocess.size)
    with FlopCounterMode(display=False) as counter:
        encoder.encode_image(x)
    return float(counter.get_total_flops())


def bench_one(key: str, images: int, batch_size: int, threads: int, workers: int, trials: int = 5) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from PIL import Image

    from fairfm.adapt.features import extract_features
    from fairfm.models import get_model
    from fairfm.models.timm_family import build_timm

    torch.set_num_threads(threads)
    card = get_model(MODELS[key])
    encoder = build_timm(card, None)  # random weights, the card's real architecture and preprocessing
    flops = flops_per_image(encoder)
    peak_gemm = matmul_flops(threads)
    roofline = peak_gemm / flops

    # The machine may be shared (other VMs on the host): measure the GEMM ceiling right before and after every
    # timed batch and report the median of the paired ratios, so a slow phase of the host hits both sides.
    batch = torch.randn(batch_size, 3, card.preprocess.size, card.preprocess.size)
    encoder.encode_image(batch)  # warm-up (oneDNN primitive creation, allocator)
    ratios, rates, ceilings = [], [], []
    for _ in range(trials):
        before = matmul_flops(threads, sizes=(2048,), repeats=3)
        start = time.perf_counter()
        encoder.encode_image(batch)
        rate = batch_size / (time.perf_counter() - start)
        after = matmul_flops(threads, sizes=(2048,), repeats=3)
        ceiling = max(before, after)
        rates.append(rate)
        ceilings.append(ceiling)
        ratios.append(rate / (ceiling / flops))
    encoder_rate, encoder_ratio = statistics.median(rates), statistics.median(ratios)
    peak_gemm = max(peak_gemm, *ceilings)
    roofline = peak_gemm / flops

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for i in range(images):
            Image.fromarray(rng.integers(0, 255, (256, 256), dtype=np.uint8)).save(root / f"{i}.png")
        pd.DataFrame(
            {
                "sample_id": [str(i) for i in range(images)],
                "patient_id": [str(i) for i in range(images)],
                "path": [f"{i}.png" for i in range(images)],
            }
        ).to_parquet(root / "samples.parquet")
        before = matmul_flops(threads, sizes=(2048,), repeats=3)
        start = time.perf_counter()
        result = extract_features(
            root,
            encoder,
            out=root / "cache",
            batch_size=batch_size,
            num_workers=workers,
            threads=threads,
            progress=False,
        )
        end_to_end = images / (time.perf_counter() - start)
        after = matmul_flops(threads, sizes=(2048,), repeats=3)
        assert result.features.shape == (images, encoder.embed_dim)
    end_to_end_ratio = end_to_end / (max(before, after) / flops)

    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "model": card.name,
        "architecture": card.architecture,
        "input": card.preprocess.size,
        "params_M": round(sum(p.numel() for p in encoder.module.parameters()) / 1e6, 1),
        "gflops_per_image": round(flops / 1e9, 2),
        "matmul_gflops": round(peak_gemm / 1e9, 1),
        "roofline_img_s": round(roofline, 2),
        "encoder_img_s": round(encoder_rate, 2),
        "encoder_pct_roofline": round(100 * encoder_ratio, 1),
        "trials": trials,
        "gemm_gflops_trials": [round(c / 1e9, 1) for c in ceilings],
        "end_to_end_img_s": round(end_to_end, 2),
        "end_to_end_pct_roofline": round(100 * end_to_end_ratio, 1),
        "peak_rss_MiB": round(peak_self),
        "peak_worker_rss_MiB": round(peak_children),
        "threads": threads,
        "workers": workers,
        "batch_size": batch_size,
        "images": images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", choices=sorted(MODELS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write", type=Path, default=None, help="update this Markdown file (e.g. BENCHMARKS.md)")
    args = parser.parse_args()
    if args.only:
        print(
            json.dumps(
                bench_one(args.only, args.images, args.batch_size, args.threads, args.workers, args.trials)
            )
        )
        return
    rows = []
    for key in MODELS:  # one process per model: independent peak memory
        cmd = [
            sys.executable,
            __file__,
            "--only",
            key,
            "--images",
            str(args.images),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
            "--workers",
            str(args.workers),
            "--trials",
            str(args.trials),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import describe, write_section

    header = ("model", "GFLOP/img", "matmul GFLOP/s", "roofline img/s", "encoder img/s", "% roofline",
              "end-to-end img/s", "% roofline", "peak RSS MiB")  # fmt: skip
    lines = [
        "## Feature extraction against the CPU roofline (issue 4)",
        "",
        f"`python benchmarks/bench_features.py` — random-weight ViT-B/16 and ResNet-50 at 224 px, {args.threads} "
        f"threads, {args.workers} decoding worker(s), batch {args.batch_size}, {args.images} synthetic PNGs; "
        f"roofline = the fp32 matmul FLOP/s measured in the same process ÷ FLOPs per image. Machine: "
        f"{describe(('torch', 'timm', 'numpy'))}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['architecture']}) | {r['gflops_per_image']} | {r['matmul_gflops']} | "
            f"{r['roofline_img_s']} | {r['encoder_img_s']} | {r['encoder_pct_roofline']} | {r['end_to_end_img_s']} | "
            f"{r['end_to_end_pct_roofline']} | {r['peak_rss_MiB']} (+{r['peak_worker_rss_MiB']} worker) |"
        )
    lines += ["", f"Target: ≥ 70% of the roofline on 2 cores (torch {torch.__version__})."]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, "bench-features", text)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
