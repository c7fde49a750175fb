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


def test_models_list_is_one_line_per_model_in_a_log(capsys, monkeypatch):
    from fairfm.models import list_models

    # a CI runner's default; output that is not a terminal still gets 120 columns
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = _run(["models", "list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"fairfm models ({len(list_models())})" and max(len(line) for line in lines) <= 120
    header = lines[1].split()
    assert header == ["name", "family", "architecture", "input", "dim", "zero-shot", "licence"]
    body = {line.split()[0]: line for line in lines[3:] if line.strip()}
    assert len(body) == len(list_models())  # no cell wrapped onto a second line
    for card in list_models():
        cells = body[card.name].split()
        assert cells[1] == card.family and f"{card.preprocess.size}px" in cells
        assert str(card.embed_dim) in cells and ("yes" in cells) == card.zero_shot
        assert card.licence.split()[0][:15] in body[card.name]
    code, out, _ = _run(["models", "list", "--wide", "--pattern", "biomedclip"], capsys)
    assert code == 0 and "open_clip" in out and "0.481455" in out
    code, out, _ = _run(["models", "list", "--pattern", "nothing*"], capsys)
    assert code == 0 and out.strip() == "no registered model matches --pattern 'nothing*'"


def test_models_show_prints_the_full_card(capsys):
    from fairfm.models import get_model

    card = get_model("medsam")
    code, out, _ = _run(["models", "show", "MedSAM"], capsys)
    assert code == 0 and out.splitlines()[0].strip() == "medsam"
    flat = " ".join(out.split())
    for value in (*card.identifiers, *card.checkpoint_files, card.licence, card.architecture):
        assert " ".join(value.split()) in flat
    assert " ".join(card.download.split()) in flat and " ".join(card.paper.split()) in flat
    assert "local weights none found offline" in flat
    code, out, _ = _run(["models", "show", "biomedclip", "--json"], capsys)
    shown = json.loads(out)
    assert code == 0 and shown["embed_dim"] == 512 and shown["local_weights"] is None
    assert shown["checkpoint_files"] == list(get_model("biomedclip").checkpoint_files)
    import os
    from pathlib import Path

    placed = Path(os.environ["FAIRFM_HOME"]) / "checkpoints" / "medsam" / card.checkpoint_files[0]
    placed.parent.mkdir(parents=True)
    placed.write_bytes(b"weights")
    code, out, _ = _run(["models", "show", "medsam", "--json"], capsys)
    assert code == 0 and json.loads(out)["local_weights"] == str(placed)
    code, out, err = _run(["models", "show", "medsamm"], capsys)
    assert code == 2 and out == "" and err.strip().count("\n") == 0
    assert "unknown model 'medsamm'; did you mean medsam" in err


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
        "clip",  # a plain open_clip CLIP folder (a ViT tower): BiomedCLIP's card needs a timm trunk
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
    assert "3 × 64 features of path (computed 3 samples)" in out
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
