"""Spec values that no code implements, and usages paired with a model of the wrong family, are refused when the
spec is validated — before any data is read or any feature extracted (issue 9, A.7 and B.7)."""

from __future__ import annotations

import pytest

from fairfm.errors import InputError
from fairfm.spec import RunSpec, TrainHParams, hparams_model, list_usages
from fairfm.usages import get_usage
from tests.conftest import run_cli

TRAINED = [u for u in list_usages() if issubclass(hparams_model(u), TrainHParams)]


def _spec(usage: str, model: str = "clip", **hparams) -> RunSpec:
    # dataset 'x' is never read: validation must refuse the value on its own
    return RunSpec.from_dict({"dataset": "x", "model": model, "usage": usage, "hparams": hparams})


def test_the_trained_usages_are_the_runners():
    assert set(TRAINED) == {u for u in list_usages() if get_usage(u).trains}


@pytest.mark.parametrize("usage", TRAINED)
def test_a_step_schedule_is_refused_listing_the_implemented_ones(usage):
    with pytest.raises(InputError, match=r"^spec: hparams\.schedule: 'step' is not one of 'cosine' or 'constant'$"):
        _spec(usage, schedule="step")
    for schedule in ("cosine", "constant"):
        assert _spec(usage, schedule=schedule).hparams["schedule"] == schedule


@pytest.mark.parametrize("usage", ["linear_probe", "prototype", "clip_adapter"])
def test_oct_chunks_are_refused_for_the_cached_feature_usages(usage):
    with pytest.raises(InputError, match=r"^spec: hparams\.volume: oct_chunks trains a projector in front of the "
                                         "encoder, which a usage on cached features cannot do; use max_slice"):
        _spec(usage, volume="oct_chunks")


@pytest.mark.parametrize("usage", ["lora", "bitfit", "vpt", "adapter", "full_finetune"])
def test_oct_chunks_stay_valid_for_fine_tuning(usage):
    assert _spec(usage, volume="oct_chunks").hparams["volume"] == "oct_chunks"


@pytest.mark.parametrize("value", ["bogus", "rand-x9", "randaugment"])
def test_a_randaugment_string_timm_cannot_parse_is_refused(value):
    with pytest.raises(InputError, match=rf"hparams\.randaugment: '{value}' is not a timm RandAugment string"):
        _spec("full_finetune", randaugment=value)
    assert _spec("full_finetune", randaugment="rand-m9-n2-mstd0.5").hparams["randaugment"] == "rand-m9-n2-mstd0.5"
    assert _spec("full_finetune", randaugment=None).hparams["randaugment"] is None


@pytest.mark.parametrize(("usage", "model", "needs"), [
    ("sam", "clip", "sam_prompt needs a promptable segmentation model"),
    ("zero_shot", "resnet50_scratch", "zero_shot needs a vision-language model"),
    ("prototype", "medsam", "prototype needs a vision-language model"),
    ("clip_adapter", "bit_m_r50x1", "clip_adapter needs a vision-language model"),
])  # fmt: skip
def test_a_usage_on_a_model_of_another_family_names_the_family_before_the_hparams(usage, model, needs):
    # batch_size is not a sam_prompt field, but the family mismatch is the fault to report
    with pytest.raises(InputError, match=rf"^spec: usage: model '{model}' is a [a-z-]+ model: {needs}"):
        _spec(usage, model=model, batch_size=8)
    with pytest.raises(InputError, match=needs):
        _spec(usage, model=model)


def test_usages_open_to_every_family_accept_any_model():
    for model in ("clip", "resnet50_scratch", "medsam"):
        assert _spec("linear_probe", model=model).usage == "linear_probe"


def test_fairfm_run_names_the_family_for_sam_on_a_clip_model(tmp_path, capsys):
    code, out, err = run_cli(capsys, "run", "--dataset", tmp_path, "--model", "clip", "--usage", "sam",
                             "--hp", "batch_size=8", "--store", tmp_path / "store")  # fmt: skip
    assert code == 2 and "sam_prompt needs a promptable segmentation model" in err and "unknown field" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "store").exists()
