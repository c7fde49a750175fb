"""Model cards: coverage of the zoo, facts checked against the libraries' own configurations."""

from __future__ import annotations

import json

import pytest

from fairfm.errors import InputError
from fairfm.models import get_model, list_models
from fairfm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD
from tests.models.model_fixtures import run_python

FAIRMEDFM_11 = [
    "clip",
    "blip",
    "blip2",
    "medclip",
    "pubmedclip",
    "biomedclip",
    "dinov2",
    "c2l",
    "lvm_med_vit",
    "medmae",
    "mococxr",
]
OTHERS = [
    "plip",
    "siglip",
    "medsiglip",
    "rad_dino",
    "mae",
    "mocov3",
    "bit_m_r152x2",
    "remedis_r152x2",
    "clip_vit_b16",
    "clip_rn50",
    "resnet50_imagenet",
    "vit_b16_imagenet",
    "resnet50_scratch",
]
SEGMENTATION = [
    "sam_vit_b",
    "medsam",
    "mobilesam",
    "tinysam",
    "sam_med2d",
    "ft_sam",
    "sam2_hiera_tiny",
    "medsam2",
]


def test_zoo_has_the_required_models():
    names = {card.name for card in list_models()}
    wanted = FAIRMEDFM_11 + OTHERS + SEGMENTATION
    assert not [n for n in wanted if n not in names]
    classification = [c for c in list_models() if c.family in ("vision", "vision-language")]
    assert len(classification) >= 25
    assert len(list_models(family="segmentation")) >= 8


def test_cards_are_complete_and_serialisable():
    for card in list_models():
        data = json.loads(json.dumps(card.to_dict()))
        for field in ("name", "family", "architecture", "library", "download", "licence", "paper"):
            assert data[field], (card.name, field)
        assert data["embed_dim"] > 0 and data["input_size"] >= 64
        assert len(data["preprocess"]["mean"]) == 3 and all(s > 0 for s in data["preprocess"]["std"])
        assert card.identifiers or not card.needs_weights
        if card.needs_weights:
            assert card.checkpoint_files, card.name
        assert card.zero_shot == (card.family == "vision-language"), card.name


def test_lookup_is_case_insensitive_and_unknown_names_list_the_zoo():
    assert get_model("BiomedCLIP").name == "biomedclip"
    with pytest.raises(InputError, match="unknown model 'nope'.*biomedclip"):
        get_model("nope")
    with pytest.raises(InputError, match="family"):
        list_models(family="audio")
    assert [c.name for c in list_models("sam_vit_*")] == ["sam_vit_b", "sam_vit_h", "sam_vit_l"]


def _timm_tagged_cards():
    return [c for c in list_models() if c.library == "timm" and "." in c.spec["arch"]]


@pytest.mark.parametrize("card", _timm_tagged_cards(), ids=lambda c: c.name)
def test_timm_cards_match_timms_pretrained_config(card):
    """Oracle: timm's own pretrained_cfg for the published tag (read offline, no download)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(card.spec["arch"]).to_dict()
    if card.name == "densenet121_glocker":  # Glocker's script deliberately skips normalisation
        assert card.preprocess.scale == "raw255" and card.preprocess.mean == (0.0,) * 3
        return
    assert card.preprocess.mean == pytest.approx(cfg["mean"]) and card.preprocess.std == pytest.approx(
        cfg["std"]
    )
    assert card.preprocess.interpolation == cfg["interpolation"]
    if "img_size" not in card.spec:  # DINOv2 cards deliberately run at 224 px instead of timm's 518
        assert card.preprocess.size == cfg["input_size"][-1]
        assert card.preprocess.crop_pct == pytest.approx(cfg["crop_pct"])


@pytest.mark.parametrize("card", [c for c in list_models() if c.library == "timm"], ids=lambda c: c.name)
def test_timm_card_embedding_size_is_the_architectures(card):
    """Oracle: build the real architecture on the meta device (no memory, no weights) and read num_features."""
    import timm
    import torch

    kwargs = {k: card.spec[k] for k in ("img_size", "global_pool") if k in card.spec}
    with torch.device("meta"):
        model = timm.create_model(card.spec["arch"].split(".")[0], pretrained=False, num_classes=0, **kwargs)
    assert model.num_features == card.embed_dim


def test_open_clip_cards_match_open_clips_configs():
    import open_clip

    for card in list_models():
        if card.library != "open_clip" or card.spec.get("arch") is None:
            continue
        assert card.preprocess.mean == OPENAI_MEAN and card.preprocess.std == OPENAI_STD
        assert open_clip.get_model_config(card.spec["arch"])["embed_dim"] == card.embed_dim
        base, _, _ = card.spec["arch"].partition("-quickgelu")
        pretrained = open_clip.get_pretrained_cfg(base, "openai")
        assert tuple(pretrained["mean"]) == card.preprocess.mean and pretrained["quick_gelu"]


def test_sam_cards_follow_the_published_preprocessing():
    sam = get_model("sam_vit_b").preprocess
    assert (sam.size, sam.resize, sam.scale) == (1024, "longest-pad", "raw255")
    assert sam.mean == (123.675, 116.28, 103.53) and sam.std == (58.395, 57.12, 57.375)
    medsam = get_model("medsam").preprocess
    assert (medsam.size, medsam.resize, medsam.scale) == (1024, "squash", "minmax")
    assert get_model("ft_sam").preprocess.size == 256
    assert get_model("siglip").preprocess.mean == (0.5, 0.5, 0.5)
    assert (
        get_model("dinov2").preprocess.mean == IMAGENET_MEAN
        and get_model("dinov2").preprocess.std == IMAGENET_STD
    )
    assert get_model("medmae").preprocess.mean == (0.5056,) * 3


def test_importing_the_zoo_does_not_import_torch():
    result = run_python("import sys, fairfm.models as m; m.list_models(); print('torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
