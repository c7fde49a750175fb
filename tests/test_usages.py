"""A usage is one file (issue 10, item 0): a module of one's own registers a usage — its hyper-parameters, its run
function and its needs — and ``fairfm run`` validates, runs and stores it with no edit anywhere else. Every
registered usage's declared needs (train split, model family, segmentation, training loop) are what the runner
does."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairfm import runner
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import RunSpec
from fairfm.usages import LOOPS, HParams, base as usages_base, get_usage, list_usages, register_usage
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "usages.md"


def _guide_example() -> str:
    """The one file of docs/usages.md, "Adding a usage" (a nearest-class-mean usage on cached features, written with
    the public API only): the test runs what the guide shows."""
    section = GUIDE.read_text(encoding="utf-8").split("## Adding a usage", 1)[1]
    return re.search(r"```python\n(# nearest_mean_usage\.py\n.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def no_train_dir(synth_dir, tmp_path_factory) -> Path:
    """The synthetic dataset with its train samples moved to val (images still read from the original root)."""
    folder = tmp_path_factory.mktemp("no_train")
    table = pd.read_parquet(synth_dir / "samples.parquet")
    table["split"] = table["split"].replace("train", "val")
    table.to_parquet(folder / "samples.parquet")
    (folder / "dataset.json").write_text((synth_dir / "dataset.json").read_text())
    return folder


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The one file, written outside the package and imported from sys.path; its registration is undone after."""
    monkeypatch.setattr(usages_base, "_USAGES", dict(usages_base._USAGES))
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "nearest_mean_usage.py").write_text(_guide_example())
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    module = importlib.import_module("nearest_mean_usage")
    yield module
    sys.modules.pop("nearest_mean_usage", None)


def _spec(dataset: Path, clip_dir: Path, usage: str, **extra) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(dataset), "model": "clip", "checkpoint": str(clip_dir), "usage": usage,
                              "bootstrap": 20, "device": "cpu", **extra})  # fmt: skip


def test_a_usage_in_one_file_is_validated_run_and_stored(plugin, synth_dir, clip_dir, tmp_path, capsys):
    entry = get_usage("nearest_mean")
    assert (entry.hparams, entry.trains, entry.loop, entry.cached_features) == (plugin.NearestMeanHParams, True,
                                                                                None, True)  # fmt: skip
    assert "nearest_mean" in list_usages()
    # Its hyper-parameters are validated like a built-in usage's: unknown keys and bad values are one-line errors.
    with pytest.raises(InputError, match=r"^spec: hparams\.temprature: unknown field \(check the spelling\)$"):
        _spec(synth_dir, clip_dir, "nearest_mean", hparams={"temprature": 2})
    with pytest.raises(InputError, match=r"^spec: hparams\.temperature: Input should be greater than 0$"):
        _spec(synth_dir, clip_dir, "nearest_mean", hparams={"temperature": 0})

    store = Store(tmp_path / "store")
    spec = _spec(synth_dir, clip_dir, "nearest_mean", hparams={"temperature": 5})
    first = runner.execute(spec, store, progress=False)
    assert first.computed and first.record.spec["hparams"] == {"temperature": 5.0}
    # On cached features: its run id depends on the features' results version, as the built-in probe's does.
    assert set(first.record.meta["results_versions"]) == {"metrics", "runner", "features", "usage.nearest_mean"}

    # Oracle: nearest class means over features extracted independently (another cache), in numpy.
    from fairfm.adapt.features import extract_features

    table = pd.read_parquet(synth_dir / "samples.parquet")
    extracted = extract_features(table, "clip", out=tmp_path / "oracle_features", checkpoint=clip_dir,
                                 root=synth_dir, progress=False)  # fmt: skip
    features = np.empty(extracted.features.shape)
    features[extracted.index["table_row"].to_numpy()] = extracted.features
    y, train = table["label_disease"].to_numpy(), (table["split"] == "train").to_numpy()
    mean0, mean1 = features[train & (y == 0)].mean(axis=0), features[train & (y == 1)].mean(axis=0)
    gap = ((features - mean0) ** 2).sum(axis=1) - ((features - mean1) ** 2).sum(axis=1)
    expected = pd.Series(1 / (1 + np.exp(-gap / 5)), index=table["sample_id"].astype(str))
    predictions = first.record.predictions
    assert set(predictions["split"]) == {"val", "test"} and len(predictions) == int((~train).sum())
    np.testing.assert_allclose(predictions["y_score"], expected[predictions["sample_id"]].to_numpy(), rtol=1e-5)

    # Found again, from the Python API and from the command line with the usage's flags.
    assert not runner.execute(spec, store, progress=False).computed
    code, out, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir,
                             "--usage", "nearest_mean", "--hp", "temperature=5", "--bootstrap", "20", "--device",
                             "cpu", "--store", store.path, "-q")  # fmt: skip
    assert code == 0 and f"run {first.record.run_id}: found in the store" in out, err
    code, out, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--usage", "nearest_mean",
                             "--hp", "k=3", "--store", store.path)  # fmt: skip
    assert code == 2 and err.strip() == "error: --hp k=3: unknown field (check the spelling)"


def test_the_one_file_usage_honours_its_declared_train_split(plugin, no_train_dir, clip_dir, tmp_path):
    with pytest.raises(InputError, match=r"samples\.parquet: the split has no 'train' samples \(the nearest_mean "
                                         r"usage needs train, val, test\)$"):  # fmt: skip
        runner.run(_spec(no_train_dir, clip_dir, "nearest_mean"), Store(tmp_path / "store"), progress=False)


def test_a_usage_name_is_registered_once():
    entry = get_usage("linear_probe")
    with pytest.raises(ValueError, match="usage 'linear_probe' registered twice"):
        register_usage("linear_probe", hparams=HParams, trains=True, loop="features")(lambda *a, **k: None)
    assert get_usage("linear_probe") is entry


@pytest.mark.parametrize(("declared", "message"), [
    ({"loop": "epochs", "trains": True}, "loop 'epochs' is not one of features, images, clip_head or None"),
    ({"loop": "features", "trains": False}, "a usage that runs the 'features' loop trains"),
    ({"loop": None, "trains": False, "model_family": "vision"}, "model_family 'vision' is not one of"),
])  # fmt: skip
def test_a_registration_with_needs_the_runner_cannot_honour_is_refused(declared, message):
    with pytest.raises(ValueError, match=message):
        register_usage("odd", hparams=HParams, **declared)
    assert "odd" not in list_usages()


def test_an_unknown_usage_names_the_known_ones():
    with pytest.raises(InputError, match=r"^unknown usage 'probing'; known usages: adapter, bitfit, clip_adapter, "):
        get_usage("probing")


def test_importing_the_spec_alone_registers_every_built_in_usage_without_heavy_imports():
    code = ("import sys, json, fairfm.spec; from fairfm.usages.base import _USAGES; "
            "print(json.dumps([sorted(_USAGES), [m for m in ('numpy', 'pandas', 'torch') if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    names, heavy = json.loads(out)
    assert set(names) >= {"zero_shot", "linear_probe", "prototype", "clip_adapter", "lora", "bitfit", "vpt",
                          "adapter", "full_finetune", "sam_prompt"} and heavy == []  # fmt: skip


# -- the declared needs of every registered usage are what the runner does ------------------------------------


@pytest.mark.parametrize("usage", [u for u in list_usages() if get_usage(u).trains])
def test_a_trained_usage_refuses_a_dataset_without_a_train_split_in_one_line(usage, no_train_dir, clip_dir,
                                                                             tmp_path):  # fmt: skip
    with pytest.raises(InputError) as caught:
        runner.run(_spec(no_train_dir, clip_dir, usage), Store(tmp_path / "store"), progress=False)
    message = str(caught.value)
    assert message == (f"{no_train_dir / 'samples.parquet'}: the split has no 'train' samples (the {usage} usage "
                       "needs train, val, test)")  # fmt: skip


@pytest.mark.parametrize("usage", [u for u in list_usages() if not get_usage(u).trains
                                   and not get_usage(u).segmentation])  # fmt: skip
def test_an_untrained_usage_runs_without_a_train_split(usage, no_train_dir, clip_dir, tmp_path):
    record = runner.run(_spec(no_train_dir, clip_dir, usage), Store(tmp_path / "store"), progress=False)
    assert set(record.predictions["split"]) == {"val", "test"}


@pytest.mark.parametrize("usage", [u for u in list_usages() if get_usage(u).segmentation])
def test_a_segmentation_usage_asks_for_masks_before_anything_else(usage, synth_dir, tmp_path):
    spec = RunSpec.from_dict({"dataset": str(synth_dir), "model": "medsam", "usage": usage})
    with pytest.raises(InputError, match=rf"samples\.parquet: SampleTable has no path_mask column: {usage} needs a "
                                         "segmentation dataset"):  # fmt: skip
        runner.preflight(spec, Store(tmp_path / "store"))
    assert get_usage(usage).needed_splits(has_val=False) == ("test",)  # nothing trained, nothing thresholded


#: a model of each family (registered cards: no weights are read by these checks)
_MODEL_OF = {"vision": "resnet50_scratch", "vision-language": "clip", "segmentation": "medsam"}


@pytest.mark.parametrize("usage", list_usages())
def test_the_model_family_is_one_rule_for_the_spec_and_the_runner(usage, tmp_path):
    from fairfm.models import get_model

    entry = get_usage(usage)
    for family, model in _MODEL_OF.items():
        refusal = entry.family_refusal(model, get_model(model).family)
        accepted = family == entry.model_family or (entry.model_family is None and family != "segmentation")
        assert (refusal is None) is accepted, (family, refusal)
        data = {"dataset": "x", "model": model, "usage": usage}
        if accepted:
            runner.check_model_family(RunSpec.from_dict(data))
        elif entry.model_family is not None:  # refused when the spec is read, before its hyper-parameters
            with pytest.raises(InputError, match=f"^spec: usage: {re.escape(refusal)}$"):
                RunSpec.from_dict(data)
        else:  # open to every image encoder: the runner refuses a promptable segmenter before any work
            with pytest.raises(InputError) as caught:
                runner.preflight(RunSpec.from_dict(data), Store(tmp_path / "store"), check_data=False)
            assert str(caught.value) == refusal


class _LoopReached(Exception):
    pass


@pytest.mark.parametrize("usage", [u for u in list_usages() if not get_usage(u).segmentation])
def test_every_usage_runs_the_training_loop_it_declares(usage, synth_dir, clip_dir, tmp_path, monkeypatch):
    # Mitigation methods plug into a loop by its declared name: the declaration must be the loop the code runs.
    from fairfm.adapt import clip_adaptation, linear_probe, train

    def reached(loop):
        def spy(*args, **kwargs):
            raise _LoopReached(loop)

        return spy

    monkeypatch.setattr(linear_probe, "fit_head", reached("features"))
    monkeypatch.setattr(clip_adaptation, "fit_head", reached("clip_head"))
    monkeypatch.setattr(train, "fit", reached("images"))
    assert set(LOOPS) == {"features", "clip_head", "images"}
    spec = _spec(synth_dir, clip_dir, usage, bootstrap=0)
    try:
        runner.compute_run(spec, store_path=tmp_path / "store", progress=False)
        ran = None
    except _LoopReached as exc:
        ran = exc.args[0]
    assert ran == get_usage(usage).loop


def test_prompting_usages_refuse_class_names_that_are_not_a_negative_positive_pair():
    import pydantic

    from fairfm.usages.coop import CoOpHParams
    from fairfm.usages.zero_shot import ZeroShotHParams

    for model in (ZeroShotHParams, CoOpHParams):
        with pytest.raises(pydantic.ValidationError, match=r"expected 2 class names \[negative, positive\], got 3"):
            model(classnames=["no finding", "effusion", "edema"])
        assert model(classnames=["no finding", "effusion"]).classnames == ["no finding", "effusion"]
