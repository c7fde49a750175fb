"""segment_anything loaders: a tiny SAM saved as a weights-only .pth, loaded back and prompted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor

from fairfm.errors import InputError
from fairfm.models import Encoder, PromptableSegmenter, create_model
from fairfm.models.sam_family import build_sam_modules
from tests.models.model_fixtures import TINY_SAM, pickled_checkpoint


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    torch.manual_seed(0)
    sam = build_sam_modules(variant="vit_b", image_size=256, **TINY_SAM).eval()
    folder = tmp_path_factory.mktemp("sam")
    torch.save(sam.state_dict(), folder / "sam_vit_b_01ec64.pth")  # how the official SAM weights are stored
    return folder / "sam_vit_b_01ec64.pth", sam


def _image(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_sam_matches_segment_anythings_predictor(tiny_sam):
    path, reference = tiny_sam
    model = create_model("sam_vit_b", checkpoint=path, img_size=256, **TINY_SAM)
    assert isinstance(model, PromptableSegmenter) and model.preprocess.size == 256
    image = _image(256, 256)  # at the model size, so SamPredictor's PIL resize is the identity
    predictor = SamPredictor(reference)
    predictor.set_image(image)
    point, box = np.array([[100.0, 120.0]]), np.array([40.0, 50.0, 200.0, 210.0])
    ref_masks, ref_scores, _ = predictor.predict(
        point_coords=point, point_labels=np.array([1]), box=box, multimask_output=True
    )
    masks, scores = model.segment(image, points=point, point_labels=[1], boxes=box)
    assert masks.shape == (3, 256, 256) and masks.dtype == bool and scores.shape == (3,)
    assert np.allclose(scores, ref_scores, atol=1e-4)
    assert (masks == ref_masks).mean() > 0.999


def test_sam_masks_come_back_at_the_original_size(tiny_sam):
    path, _ = tiny_sam
    model = create_model("sam_vit_b", checkpoint=path, img_size=256, **TINY_SAM)
    image = _image(120, 200)
    masks, scores = model.segment(image, boxes=[[10, 10, 100, 90], [50, 20, 150, 110]], multimask=False)
    assert masks.shape == (2, 120, 200) and scores.shape == (2,)
    again, _ = model.segment(image, boxes=[[10, 10, 100, 90], [50, 20, 150, 110]], multimask=False)
    assert np.array_equal(masks, again)
    with pytest.raises(ValueError, match="needs points or boxes"):
        model.segment(image)
    with pytest.raises(InputError, match="one box only"):
        model.segment(image, points=[[5, 5]], boxes=[[0, 0, 9, 9], [1, 1, 8, 8]])


def test_medsam_uses_its_own_preprocessing(tiny_sam):
    path, reference = tiny_sam
    medsam_file = path.parent / "medsam_vit_b.pth"
    medsam_file.write_bytes(path.read_bytes())
    model = create_model("medsam", checkpoint=medsam_file, img_size=256, **TINY_SAM)
    prep = model.preprocess
    assert (prep.size, prep.resize, prep.scale) == (256, "squash", "minmax")
    image = _image(256, 256)[..., 0].astype(np.float32) * 3.0 + 100.0  # e.g. an unwindowed 2D slice
    box = np.array([30.0, 30.0, 180.0, 200.0])
    masks, scores = model.segment(image, boxes=box)
    # Oracle: MedSAM_Inference.py — min–max to [0, 1], image encoder called directly, box at model scale.
    x = (image - image.min()) / (image.max() - image.min())
    x = torch.from_numpy(np.repeat(x[None], 3, axis=0)).float()[None]
    with torch.no_grad():
        embedding = reference.image_encoder(x)
        sparse, dense = reference.prompt_encoder(points=None, boxes=torch.tensor(box)[None], masks=None)
        low_res, iou = reference.mask_decoder(
            embedding, reference.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
    assert np.allclose(scores, iou.reshape(-1).numpy(), atol=1e-4)
    expected = torch.nn.functional.interpolate(low_res, (256, 256), mode="bilinear", align_corners=False) > 0
    assert (masks == expected[0].numpy()).mean() > 0.999


def test_sam_pickle_refusal_and_unavailable_cards(tiny_sam, tmp_path):
    _, reference = tiny_sam
    path = pickled_checkpoint(reference.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    with pytest.raises(InputError, match="refused .*--trust-checkpoint"):
        create_model("sam_vit_b", checkpoint=path, img_size=256, **TINY_SAM)
    assert create_model("sam_vit_b", checkpoint=path, trust_checkpoint=True, img_size=256, **TINY_SAM)
    weights = tmp_path / "mobile_sam.pt"
    weights.write_bytes(b"x")
    with pytest.raises(InputError, match="mobile_sam package"):
        create_model("mobilesam", checkpoint=weights)


def test_lvm_med_vit_pools_the_256_channel_neck(tmp_path):
    torch.manual_seed(0)
    small = {
        k: v
        for k, v in TINY_SAM.items()
        if k in ("embed_dim", "depth", "num_heads", "global_attn", "window_size")
    }
    encoder_module = build_sam_modules(
        variant="vit_b", encoder_only=True, use_abs_pos=False, img_size=64, **small
    ).eval()
    torch.save({f"model.{k}": v for k, v in encoder_module.state_dict().items()}, tmp_path / "lvmmed_vit.pth")
    encoder = create_model("lvm_med_vit", checkpoint=tmp_path / "lvmmed_vit.pth", img_size=64, **small)
    assert isinstance(encoder, Encoder) and encoder.embed_dim == 256 and encoder.preprocess.size == 64
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(encoder.encode_image(batch), encoder_module(batch).mean(dim=(2, 3)), atol=1e-5)


def test_the_image_is_encoded_once_per_image_not_per_prompt(tiny_sam, monkeypatch):
    path, _ = tiny_sam
    model = create_model("sam_vit_b", checkpoint=path, img_size=256, **TINY_SAM)
    fresh = create_model("sam_vit_b", checkpoint=path, img_size=256, **TINY_SAM)
    calls = []
    encoder = model.module.image_encoder
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda x: calls.append(x.shape) or original(x))
    buffer = _image(120, 200)
    first, first_scores = model.segment(buffer, points=[[50, 60]])
    second, _ = model.segment(buffer, boxes=[[10, 10, 100, 90]])
    assert len(calls) == 1  # a second prompt on the same image reuses its embedding
    assert np.array_equal(second, fresh.segment(buffer, boxes=[[10, 10, 100, 90]])[0])
    buffer[:60] = 255 - buffer[:60]  # a different image in the same array: never served the stale embedding
    changed, changed_scores = model.segment(buffer, points=[[50, 60]])
    assert len(calls) == 2
    expected, expected_scores = fresh.segment(buffer, points=[[50, 60]])
    assert np.array_equal(changed, expected) and np.allclose(changed_scores, expected_scores)
    assert not np.allclose(changed_scores, first_scores)
