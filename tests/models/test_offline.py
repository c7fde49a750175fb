"""Offline behaviour: fast failure naming the paths searched, local caches, HF offline mode, pickle refusal."""

from __future__ import annotations

import time

import pytest
import torch

from fairfm.errors import InputError
from fairfm.models import create_model, get_model
from fairfm.models.checkpoints import extract_state_dict, load_weights_file, resolve_checkpoint
from tests.models.model_fixtures import pickled_checkpoint, run_python


def test_missing_weights_fail_fast_naming_paths_and_download(tmp_path):
    start = time.perf_counter()
    with pytest.raises(InputError) as info:
        create_model("biomedclip")
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert "models--microsoft--BiomedCLIP-PubMedBERT_256-vit_base_patch16_224" in message
    assert "huggingface-cli download microsoft/BiomedCLIP" in message and "--checkpoint" in message
    with pytest.raises(InputError, match=r"checkpoint .*nothing\.pth not found"):
        create_model("medsam", checkpoint=tmp_path / "nothing.pth")


def test_fast_failure_in_a_fresh_process_without_importing_torch(tmp_path):
    code = (
        "import sys, time\n"
        "from fairfm.models import create_model\n"
        "from fairfm.errors import InputError\n"
        "t = time.perf_counter()\n"
        "try:\n    create_model('sam_vit_b')\nexcept InputError as e:\n"
        "    print(round(time.perf_counter() - t, 3), 'torch' in sys.modules, e)\n"
    )
    result = run_python(
        code,
        HF_HUB_CACHE=str(tmp_path / "hf"),
        TORCH_HOME=str(tmp_path / "t"),
        FAIRFM_HOME=str(tmp_path / "f"),
    )
    seconds, torch_loaded, message = result.stdout.split(" ", 2)
    assert float(seconds) < 1.0 and torch_loaded == "False"
    assert "sam_vit_b_01ec64.pth" in message and "dl.fbaipublicfiles.com/segment_anything" in message


def test_offline_mode_holds_even_if_huggingface_hub_was_imported_first(tmp_path):
    code = (
        "import time, huggingface_hub, huggingface_hub.constants as c\n"
        "before = c.HF_HUB_OFFLINE\n"
        "import fairfm.models\n"
        "from fairfm.models import ensure_offline; ensure_offline()\n"
        "t = time.perf_counter()\n"
        "try:\n    huggingface_hub.hf_hub_download('fairfm-test/not-there', 'config.json')\n"
        "except Exception as e:\n    print(before, c.HF_HUB_OFFLINE, type(e).__name__, round(time.perf_counter() - t, 2))\n"
    )
    result = run_python(code, HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    before, after, error, seconds = result.stdout.split()
    assert before == "False" and after == "True"
    assert "LocalEntryNotFound" in error or "Offline" in error
    assert float(seconds) < 2.0


def test_weights_are_found_in_the_local_hub_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    repo = hub / "models--timm--resnet50.a1_in1k"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert resolve_checkpoint(get_model("resnet50_imagenet"), None) == snapshot


def test_weights_are_found_in_the_fairfm_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRFM_HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / "checkpoints" / "medsam" / "medsam_vit_b.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert resolve_checkpoint(get_model("medsam"), None) == target


def test_from_scratch_needs_no_weights():
    assert resolve_checkpoint(get_model("resnet50_scratch"), None) is None


def test_pickle_checkpoints_are_refused_unless_trusted(tmp_path):
    state = {"w": torch.ones(2)}
    path = pickled_checkpoint(state, tmp_path / "train.pth")
    with pytest.raises(InputError, match=r"train\.pth: refused .*--trust-checkpoint"):
        load_weights_file(path)
    loaded = load_weights_file(path, trust_checkpoint=True)
    assert torch.equal(extract_state_dict(loaded, path=path)["w"], state["w"])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.pth: cannot be read"):
        load_weights_file(garbage)


def test_state_dict_unwrapping_and_prefixes(tmp_path):
    raw = {
        "state_dict": {
            "module.base_encoder.a": torch.zeros(1),
            "module.base_encoder.head.w": torch.zeros(1),
            "module.momentum_encoder.a": torch.zeros(1),
        },
        "epoch": 3,
    }
    out = extract_state_dict(
        raw,
        path=tmp_path / "x",
        strip_prefixes=("module.base_encoder.",),
        drop_prefixes=("module.momentum_encoder.", "head."),
    )
    assert list(out) == ["a"]
    with pytest.raises(InputError, match="no state dict"):
        extract_state_dict({"epoch": 3}, path=tmp_path / "x")
