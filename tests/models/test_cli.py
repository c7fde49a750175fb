"""``fairfm models list`` and ``fairfm features extract`` through the real entry point."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairfm.cli import main


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.out, captured.err


def test_models_list_json_and_table(capsys):
    code, out, _ = _run(["models", "list", "--json"], capsys)
    assert code == 0
    cards = json.loads(out)
    families = [c["family"] for c in cards]
    assert families.count("segmentation") >= 8 and len(cards) - families.count("segmentation") >= 25
    biomedclip = next(c for c in cards if c["name"] == "biomedclip")
    assert biomedclip["embed_dim"] == 512 and biomedclip["zero_shot"] and biomedclip["input_size"] == 224
    code, out, _ = _run(["models", "list", "--family", "segmentation"], capsys)
    assert code == 0 and "medsam" in out and "biomedclip" not in out
    code, _, err = _run(["models", "list", "--family", "audio"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "unknown model family 'audio'" in err


def test_features_extract_with_a_checkpoint_then_cached(tmp_path, capsys, open_clip_dir):
    folder, _ = open_clip_dir
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (70, 80), dtype=np.uint8)).save(data / f"{i}.png")
    pd.DataFrame(
        {"sample_id": ["a", "b", "c"], "patient_id": ["p", "p", "q"], "path": ["0.png", "1.png", "2.png"]}
    ).to_parquet(data / "samples.parquet")
    argv = [
        "features",
        "extract",
        "--data",
        str(data),
        "--model",
        "biomedclip",
        "--checkpoint",
        str(folder),
        "--out",
        str(tmp_path / "cache"),
        "--workers",
        "0",
        "--batch-size",
        "2",
    ]
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "3 × 64 features (computed 3 samples)" in out
    code, out, _ = _run(argv, capsys)
    assert code == 0 and "(cached)" in out
    key_dir = next((tmp_path / "cache").iterdir())
    assert np.load(key_dir / "features.npy").shape == (3, 64)
    assert json.loads((key_dir / "meta.json").read_text())["preprocess"]["size"] == 64


def test_features_extract_errors_are_one_line(tmp_path, capsys):
    code, _, err = _run(
        ["features", "extract", "--data", str(tmp_path), "--model", "medsam", "--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 2 and "no samples.parquet" in err and err.strip().count("\n") == 0
    pd.DataFrame({"sample_id": ["a"], "patient_id": ["p"], "path": ["a.png"]}).to_parquet(
        tmp_path / "samples.parquet"
    )
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "a.png")
    code, _, err = _run(
        ["features", "extract", "--data", str(tmp_path), "--model", "medmae", "--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 2 and "no weights found offline" in err and "vit-b_CXR_0.5M_mae.pth" in err
    code, _, err = _run(
        ["features", "extract", "--data", str(tmp_path), "--model", "medsam", "--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 2 and "promptable segmentation model" in err
    code, _, err = _run(
        ["features", "extract", "--data", str(tmp_path), "--model", "nope", "--out", str(tmp_path / "c")],
        capsys,
    )
    assert code == 2 and "unknown model 'nope'" in err
