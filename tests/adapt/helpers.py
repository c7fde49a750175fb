"""Tiny inputs for the adaptation and runner tests: a planted-bias dataset and a random-weight open_clip CLIP saved
in open_clip's ``local-dir`` checkpoint layout (the configuration of C's model fixtures)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.models.model_fixtures import TINY_OPEN_CLIP


def make_synth(folder: Path, *, n: int = 120, size: int = 32, seed: int = 0) -> Path:
    from fairfm.data.synth import generate

    generate(folder, n=n, size=size, seed=seed)
    return folder


def make_tiny_clip(folder: Path, *, seed: int = 0) -> Path:
    """A tiny CLIP (64-px ViT, 2-layer text transformer) as ``open_clip_config.json`` + weights."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_OPEN_CLIP,
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder
