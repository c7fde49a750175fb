"""SAM 2.1 through transformers: a tiny Hiera SAM 2 saved with save_pretrained, loaded and prompted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from fairfm.errors import InputError
from fairfm.models import PromptableSegmenter, create_model

TINY_SAM2 = dict(
    vision_config=dict(
        backbone_config=dict(
            model_type="sam2_hiera_det_model",
            hidden_size=16,
            num_attention_heads=1,
            image_size=[256, 256],
            blocks_per_stage=[1, 1, 2, 1],
            embed_dim_per_stage=[16, 32, 64, 128],
            num_attention_heads_per_stage=[1, 1, 1, 1],
            window_size_per_stage=[4, 4, 4, 4],
            global_attention_blocks=[3],
            window_positional_embedding_background_size=[4, 4],
        ),
        backbone_channel_list=[128, 64, 32, 16],
        backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]],
        fpn_hidden_size=32,
    ),
    prompt_encoder_config=dict(hidden_size=32, image_size=256, patch_size=16, mask_input_channels=4),
    mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32),
)


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.Sam2Model(transformers.Sam2Config(**TINY_SAM2)).eval()
    processor = transformers.Sam2Processor(
        image_processor=transformers.Sam2ImageProcessor(size={"height": 256, "width": 256})
    )
    folder = tmp_path_factory.mktemp("sam2")
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder, model, processor


def test_sam2_round_trip_and_prompts(sam2_dir):
    folder, reference, processor = sam2_dir
    model = create_model("sam2_hiera_tiny", checkpoint=folder)
    assert isinstance(model, PromptableSegmenter) and model.preprocess.size == 256
    image = np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)
    masks, scores = model.segment(image, points=[[50, 60], [120, 80]], point_labels=[1, 0])
    assert masks.shape == (3, 120, 200) and masks.dtype == bool and scores.shape == (3,)
    inputs = processor(
        images=image,
        input_points=[[[[50.0, 60.0], [120.0, 80.0]]]],
        input_labels=[[[1, 0]]],
        return_tensors="pt",
    )
    with torch.no_grad():
        out = reference(
            pixel_values=inputs["pixel_values"],
            input_points=inputs["input_points"],
            input_labels=inputs["input_labels"],
            multimask_output=True,
        )
    expected = processor.post_process_masks(out.pred_masks, inputs["original_sizes"])[0].reshape(-1, 120, 200)
    assert np.allclose(scores, out.iou_scores.reshape(-1).numpy(), atol=1e-5)
    assert np.array_equal(masks, expected.numpy())
    boxes, box_scores = model.segment(image, boxes=[[10, 10, 90, 100], [100, 20, 190, 110]], multimask=False)
    assert boxes.shape == (2, 120, 200) and box_scores.shape == (2,)


def test_sam2_refuses_original_checkpoints(tmp_path):
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="not a transformers folder.*facebook/sam2.1-hiera-tiny"):
        create_model("sam2_hiera_tiny", checkpoint=tmp_path / "sam2.1_hiera_tiny.pt")
    (tmp_path / "MedSAM2_latest.pt").write_bytes(b"x")
    with pytest.raises(InputError, match="sam2 package"):
        create_model("medsam2", checkpoint=tmp_path / "MedSAM2_latest.pt")
