"""open_clip loaders: a tiny CLIP in the local-dir layout (BiomedCLIP / hub snapshot) and as a weights file."""

from __future__ import annotations

import argparse
import json

import open_clip
import pytest
import torch

from fairfm.errors import InputError
from fairfm.models import VisionLanguageEncoder, create_model
from tests.models.model_fixtures import TINY_OPEN_CLIP


def test_local_dir_round_trip_with_zero_shot(open_clip_dir):
    folder, reference = open_clip_dir
    encoder = create_model("clip", checkpoint=folder)  # the folder's config (a tiny ViT CLIP) is what is built
    assert isinstance(encoder, VisionLanguageEncoder)
    assert encoder.preprocess.size == 64  # read from the checkpoint's own config, not a dataset-wide setting
    assert encoder.preprocess.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    batch = torch.randn(3, 3, 64, 64)
    image = encoder.encode_image(batch)
    text = encoder.encode_text(["a chest x-ray with pneumonia", "a normal chest x-ray"])
    assert image.shape == (3, 64) and text.shape == (2, 64)
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=32)
    with torch.no_grad():
        assert torch.allclose(image, reference.encode_image(batch), atol=1e-5)
        assert torch.allclose(
            text,
            reference.encode_text(tokenizer(["a chest x-ray with pneumonia", "a normal chest x-ray"])),
            atol=1e-5,
        )
    assert encoder.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()))
    logits = encoder.similarity_logits(image, text)
    cosine = torch.nn.functional.normalize(image, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    assert torch.allclose(logits, encoder.logit_scale * cosine, atol=1e-5)


def test_named_architecture_from_a_weights_file(open_clip_dir, monkeypatch):
    """A user's weights file for the card's architecture (here the tiny config stands in for ViT-B-32)."""
    from open_clip import factory

    folder, reference = open_clip_dir
    monkeypatch.setitem(factory._MODEL_CONFIGS, "ViT-B-32-quickgelu", {**TINY_OPEN_CLIP, "quick_gelu": True})
    tiny_quick = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None)
    tiny_quick.load_state_dict(reference.state_dict())
    encoder = create_model("clip", checkpoint=folder / "open_clip_pytorch_model.bin")
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder.encode_image(batch), tiny_quick.eval().encode_image(batch), atol=1e-5)


def test_pickled_open_clip_weights_are_refused(open_clip_dir):
    folder, reference = open_clip_dir
    torch.save(
        {"state_dict": reference.state_dict(), "args": argparse.Namespace(x=1)},
        folder / "open_clip_pytorch_model.bin",
    )
    with pytest.raises(InputError, match="refused to load this checkpoint.*--trust-checkpoint"):
        create_model("clip", checkpoint=folder)
    encoder = create_model("clip", checkpoint=folder, trust_checkpoint=True)
    assert encoder.embed_dim == 64


def test_missing_hf_text_tower_is_explained(open_clip_dir):
    folder, _ = open_clip_dir
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"] = {
        "hf_model_name": "fairfm-test/absent-bert",
        "hf_tokenizer_name": "fairfm-test/absent-bert",
        "hf_proj_type": "mlp",
        "context_length": 32,
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="absent-bert"):
        create_model("clip", checkpoint=folder)


def test_biomedclip_needs_a_config_folder(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="open_clip_config.json"):
        create_model("biomedclip", checkpoint=tmp_path / "weights.bin")


def test_a_timm_image_tower_reports_its_projection_width(tmp_path):
    # BiomedCLIP's layout: a timm trunk + linear projection (TimmModel has no output_dim). A width other than the
    # card's 512 must be read from the tower, or every head built on the features has the wrong size.
    cfg = {"embed_dim": 48,
           "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                          "timm_proj": "linear", "image_size": 32},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}  # fmt: skip
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.save(open_clip.CLIP(**cfg).state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    encoder = create_model("biomedclip", checkpoint=tmp_path)
    with torch.no_grad():
        features = encoder.encode_image(torch.randn(2, 3, 32, 32))
    assert encoder.embed_dim == 48 == features.shape[1]
