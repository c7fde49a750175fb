"""Fixtures for the model-zoo tests (helpers and tiny configurations are in model_fixtures.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.models.model_fixtures import TINY_OPEN_CLIP


@pytest.fixture
def open_clip_dir(tmp_path) -> tuple[Path, object]:
    """A tiny CLIP in open_clip's ``local-dir`` layout: open_clip_config.json + open_clip_pytorch_model.bin."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_OPEN_CLIP).eval()
    folder = tmp_path / "tiny_open_clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_cfg": TINY_OPEN_CLIP,
                "preprocess_cfg": {
                    "mean": [0.48145466, 0.4578275, 0.40821073],
                    "std": [0.26862954, 0.26130258, 0.27577711],
                },
            }
        )
    )
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder, model
