"""Each card's own preprocessing, checked against closed-form values and timm's PIL pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairfm.errors import InputError
from fairfm.models import get_model
from fairfm.models.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess, to_unit_float


def test_constant_image_normalises_to_closed_form():
    prep = Preprocess(32, OPENAI_MEAN, OPENAI_STD)
    image = np.full((40, 50), 128, dtype=np.uint8)
    out = prep(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    expected = (128 / 255 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected, dtype=torch.float32), atol=1e-5)
    assert float(out.std(dim=(1, 2)).max()) < 1e-5


def test_bit_depths_and_channels():
    assert to_unit_float(np.array([[0, 65535]], dtype=np.uint16)).max() == pytest.approx(1.0)
    assert to_unit_float(np.array([[0, 255]], dtype=np.uint8))[0, 1].tolist() == [1.0, 1.0, 1.0]
    hu = np.array([[-1000.0, 0.0], [400.0, 1000.0]])
    assert np.allclose(to_unit_float(hu)[..., 0], [[0.0, 0.5], [0.7, 1.0]])
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    assert to_unit_float(rgba)[0, 0].tolist() == [1.0, 0.0, 0.0]
    assert to_unit_float(np.array([[10, 20]], dtype=np.uint8), scale="raw255")[0, 1, 0] == pytest.approx(20.0)
    with pytest.raises(InputError, match="NaN"):
        to_unit_float(np.array([[np.nan, 1.0]]))


def test_shortest_side_resize_and_centre_crop_keeps_the_middle():
    image = np.zeros((100, 200), dtype=np.uint8)
    image[:, 50:150] = 255  # the centre square is white, the sides black
    out = Preprocess(50, (0.0,) * 3, (1.0,) * 3, interpolation="bilinear")(image)
    assert out.shape == (3, 50, 50)
    assert (
        float(out[:, :, 1:-1].min()) > 0.99
    )  # only the white centre survives (edges blurred by antialiasing)


def test_sam_longest_side_pads_bottom_right_after_normalising():
    prep = get_model("sam_vit_b").preprocess
    small = Preprocess(
        64, prep.mean, prep.std, resize=prep.resize, interpolation=prep.interpolation, scale=prep.scale
    )
    image = np.full((32, 64, 3), 200, dtype=np.uint8)
    out = small(image)
    assert out.shape == (3, 64, 64)
    expected = (200 - np.array(prep.mean)) / np.array(prep.std)
    assert torch.allclose(
        out[:, :32].mean(dim=(1, 2)), torch.tensor(expected, dtype=torch.float32), atol=1e-4
    )
    assert float(out[:, 32:].abs().max()) == 0.0  # padding is zero after normalisation, as in Sam.preprocess


def test_medsam_min_max_scaling():
    prep = get_model("medsam").preprocess
    small = Preprocess(
        16, prep.mean, prep.std, resize=prep.resize, interpolation=prep.interpolation, scale=prep.scale
    )
    image = np.linspace(100, 300, 16 * 16, dtype=np.float32).reshape(16, 16)
    out = small(image)
    assert float(out.min()) == pytest.approx(0.0) and float(out.max()) == pytest.approx(1.0)


def test_matches_timm_pil_transform_closely():
    """Oracle: timm's own eval transform (PIL resize, centre crop, normalise) for the same card settings."""
    import timm.data
    from PIL import Image

    card = get_model("vit_b16_dino")
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 15), dtype=np.uint8), np.ones((30, 30), dtype=np.uint8))
    timm_transform = timm.data.create_transform(
        input_size=(3, 224, 224),
        interpolation="bicubic",
        mean=card.preprocess.mean,
        std=card.preprocess.std,
        crop_pct=card.preprocess.crop_pct,
        crop_mode="center",
    )
    expected = timm_transform(Image.fromarray(smooth).convert("RGB"))
    ours = card.preprocess(smooth)
    assert ours.shape == expected.shape
    assert (
        float((ours - expected).abs().mean()) < 0.02
    )  # same geometry; PIL vs torch resampling differ slightly
