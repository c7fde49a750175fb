"""MedCLIP: tiny Swin + BERT towers saved as MedCLIP's own pytorch_model.bin layout, loaded back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from fairfm.errors import InputError
from fairfm.models import VisionLanguageEncoder, create_model
from tests.models.model_fixtures import word_tokenizer


def test_medclip_release_layout_round_trip(tmp_path):
    torch.manual_seed(0)
    swin_config = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=2
    )
    bert_config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=80,
    )
    swin, bert = transformers.SwinModel(swin_config).eval(), transformers.BertModel(bert_config).eval()
    vision_proj, text_proj = torch.nn.Linear(32, 512, bias=False), torch.nn.Linear(32, 512, bias=False)
    state = {f"vision_model.model.{k}": v for k, v in swin.state_dict().items()}
    state.update({f"text_model.model.{k}": v for k, v in bert.state_dict().items()})
    state["vision_model.projection_head.weight"] = vision_proj.weight.detach()
    state["text_model.projection_head.weight"] = text_proj.weight.detach()
    state["logit_scale"] = torch.tensor(5.0)  # above MedCLIP's clamp at log(100)
    torch.save(state, tmp_path / "pytorch_model.bin")
    swin_config.save_pretrained(str(tmp_path / "swin"))
    bert_config.save_pretrained(str(tmp_path / "bert"))
    word_tokenizer(tmp_path / "bert")

    encoder = create_model("medclip", checkpoint=tmp_path)
    assert isinstance(encoder, VisionLanguageEncoder) and encoder.embed_dim == 512
    assert encoder.logit_scale == pytest.approx(100.0, rel=1e-3)
    assert encoder.preprocess.mean == pytest.approx((0.5862785803043838,) * 3)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected_image = vision_proj(swin(pixel_values=pixels).pooler_output)
    assert torch.allclose(encoder.encode_image(pixels), expected_image, atol=1e-5)

    prompts = ["chest x-ray with pneumonia", "normal lung"]
    tokens = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "bert"))(
        prompts, padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = bert(**tokens, output_hidden_states=True).hidden_states
        layers = [hidden[1].numpy(), hidden[2].numpy(), hidden[-1].numpy()]
        pooled = np.mean([layer.mean(axis=1) for layer in layers], axis=0)
        expected_text = text_proj(torch.from_numpy(pooled))
    assert torch.allclose(encoder.encode_text(prompts), expected_text, atol=1e-5)


def test_medclip_needs_its_tower_configs(tmp_path):
    torch.save({"logit_scale": torch.tensor(1.0)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(InputError, match="swin-tiny-patch4-window7-224"):
        create_model("medclip", checkpoint=tmp_path)
    with pytest.raises(InputError, match="unzipped MedCLIP folder"):
        create_model("medclip", checkpoint=tmp_path / "pytorch_model.bin")
