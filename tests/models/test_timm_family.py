"""timm loaders: tiny real architectures saved in each release's own checkpoint format, loaded back."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from fairfm.errors import InputError
from fairfm.models import Encoder, create_model
from tests.models.model_fixtures import TINY_VIT, pickled_checkpoint

TINY_RESNET = dict(layers=[1, 1, 1, 1])


def _reference(arch: str, state: dict, **kwargs) -> torch.nn.Module:
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    result = model.load_state_dict(state, strict=False)
    assert not [k for k in result.missing_keys if not k.startswith("fc_norm")]
    return model.eval()


def test_medical_mae_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=5, **TINY_VIT)
    state = source.state_dict()
    torch.save({"model": state, "epoch": 799}, tmp_path / "vit-b_CXR_0.5M_mae.pth")  # the release's layout

    encoder = create_model("medmae", checkpoint=tmp_path / "vit-b_CXR_0.5M_mae.pth", **TINY_VIT)
    assert isinstance(encoder, Encoder) and encoder.embed_dim == 32
    batch = torch.randn(2, 3, 224, 224)
    features = encoder.encode_image(batch)
    assert features.shape == (2, 32) and features.dtype == torch.float32
    # Oracle: the same weights in timm with mean pooling (Medical MAE's fine-tuning recipe), head removed.
    reference = _reference(
        "vit_base_patch16_224",
        {k: v for k, v in state.items() if not k.startswith("head")},
        global_pool="avg",
        **TINY_VIT,
    )
    with torch.no_grad():
        assert torch.allclose(features, reference(batch), atol=1e-5)
    assert torch.equal(features, encoder.encode_image(batch))  # deterministic in eval mode
    assert encoder.preprocess.mean == (0.5056,) * 3


def test_mocov3_prefixes_are_stripped(tmp_path):
    torch.manual_seed(2)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT).eval()
    wrapped = {f"module.base_encoder.{k}": v for k, v in source.state_dict().items()}
    wrapped.update({f"module.momentum_encoder.{k}": v + 1 for k, v in source.state_dict().items()})
    wrapped["module.base_encoder.head.0.weight"] = torch.zeros(4, 32)  # MoCo's projection MLP is dropped
    torch.save({"state_dict": wrapped, "arch": "vit_base", "epoch": 300}, tmp_path / "vit-b-300ep.pth.tar")
    encoder = create_model("mocov3", checkpoint=tmp_path / "vit-b-300ep.pth.tar", **TINY_VIT)
    batch = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(encoder.encode_image(batch), source(batch), atol=1e-5)


def test_resnet_training_checkpoint_needs_trust(tmp_path):
    torch.manual_seed(3)
    source = timm.create_model("resnet18", pretrained=False, **TINY_RESNET)
    state = {f"module.encoder_q.{k}": v for k, v in source.state_dict().items()}
    path = pickled_checkpoint(state, tmp_path / "r8w-00001-v2.pth.tar")
    with pytest.raises(InputError, match=r"r8w-00001-v2\.pth\.tar: refused .*--trust-checkpoint"):
        create_model("mococxr", checkpoint=path, **TINY_RESNET)
    encoder = create_model("mococxr", checkpoint=path, trust_checkpoint=True, **TINY_RESNET)
    assert encoder.embed_dim == 512 and encoder.channels_last  # pooled 512-d, not the random 128-d fc
    batch = torch.randn(2, 3, 224, 224)
    reference = _reference(
        "resnet18",
        {
            k.removeprefix("module.encoder_q."): v
            for k, v in state.items()
            if not k.endswith(("fc.weight", "fc.bias"))
        },
        **TINY_RESNET,
    )
    with torch.no_grad():
        assert torch.allclose(encoder.encode_image(batch), reference(batch), atol=1e-4)


def test_timm_hub_folder_with_safetensors(tmp_path):
    """The layout of a hub snapshot of timm/<tag>: model.safetensors (+ config.json)."""
    torch.manual_seed(4)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=1000, **TINY_VIT).eval()
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    encoder = create_model("vit_b16_imagenet", checkpoint=tmp_path, **TINY_VIT)
    batch = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(
            encoder.encode_image(batch),
            source.forward_head(source.forward_features(batch), pre_logits=True),
            atol=1e-5,
        )


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = timm.create_model("resnet18", pretrained=False, **TINY_RESNET)
    torch.save(other.state_dict(), tmp_path / "wrong.pth")
    with pytest.raises(InputError, match=r"model 'medmae' .*wrong\.pth does not fit this architecture: .*missing"):
        create_model("medmae", checkpoint=tmp_path / "wrong.pth", **TINY_VIT)


def test_from_scratch_baseline_is_seeded():
    a = create_model("resnet50_scratch", layers=[1, 1, 1, 1])
    b = create_model("resnet50_scratch", layers=[1, 1, 1, 1])
    c = create_model("resnet50_scratch", layers=[1, 1, 1, 1], seed=1)
    batch = torch.randn(1, 3, 64, 64)
    assert torch.equal(a.encode_image(batch), b.encode_image(batch))
    assert not torch.equal(a.encode_image(batch), c.encode_image(batch))
    assert a.weights_id == b.weights_id != c.weights_id
    with pytest.raises(ValueError, match=r"expected a \(N, 3, H, W\) batch"):
        a.encode_image(torch.zeros(3, 64, 64))
