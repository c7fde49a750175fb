"""How runs use methods: one wiring for every loop, test labels out of reach, identity and refusals."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from fairfm import runner
from fairfm.errors import InputError
from fairfm.mitigate import runs
from fairfm.mitigate.base import Method, Needs, TrainHooks
from fairfm.results import Store
from fairfm.results.versions import run_components
from fairfm.spec import RunSpec
from tests.conftest import run_cli


def _spec(synth, clip, **extra) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(synth), "model": "clip", "checkpoint": str(clip), "usage": "linear_probe",
                              "hparams": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0}, "bootstrap": 0,
                              "seed": 0, **extra})  # fmt: skip


def test_post_processing_never_sees_the_test_labels(synth_and_clip):
    synth, clip = synth_and_clip
    seen = {}

    class Spy(Method):
        needs = Needs(loops=("features",))

        def post_process(self, val, test, *, seed):
            seen["val"], seen["test"] = val.labels, test.labels
            return val.probabilities, test.probabilities

    table = pd.read_parquet(synth / "samples.parquet")
    table = table[table["split"].isin(["val", "test"])].reset_index(drop=True)
    split = table["split"].to_numpy()
    probabilities = {s: np.full(((split == s).sum(), 1), 0.5) for s in ("val", "test")}
    spec = _spec(synth, clip, tasks=["disease"])
    runs.post_process(Spy(Spy.params_model()), spec, table, ["disease"], probabilities)
    assert seen["test"] is None and seen["val"].shape == ((split == "val").sum(), 1)


def test_selection_codes_leave_unknown_groups_out():
    table = pd.DataFrame({"split": ["train", "val", "val", "val", "test"],
                          "group_sex": ["F", "F", "unknown", "M", "M"]})  # fmt: skip
    codes = runs._codes_by_split(table, "sex")
    assert codes["val"].tolist() == [0, 2, 1]  # the method still sees 'unknown' as a group of its own
    assert codes["val_selection"].tolist() == [0, -1, 1]  # worst-group selection does not


def test_a_usage_that_drops_its_method_is_refused_not_stored_as_erm(synth_and_clip, tmp_path, monkeypatch):
    from fairfm.usages import base

    synth, clip = synth_and_clip
    entry = base.get_usage("linear_probe")

    def forgetful(spec, table, tasks, **kwargs):  # trains plain ERM and records no method
        output = entry.run(spec.replace(method=None, method_params={}), table, tasks, **kwargs)
        output.meta.pop("method", None)
        return output

    monkeypatch.setitem(base._USAGES, "linear_probe", dataclasses.replace(entry, run=forgetful))
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match="usage 'linear_probe' did not apply method 'group_dro'"):
        runner.run(_spec(synth, clip, method="group_dro"), store, progress=False)
    assert len(store) == 0


def test_a_method_has_a_results_version_in_the_run_id(synth_and_clip, tmp_path, monkeypatch):
    from fairfm.mitigate.group_dro import GroupDRO

    synth, clip = synth_and_clip
    assert run_components("linear_probe", "group_dro")["method.group_dro"] == 1
    assert "method.group_dro" not in run_components("linear_probe")
    store = Store(tmp_path / "store")
    spec = _spec(synth, clip, method="group_dro")
    before = store.run_id(spec)
    monkeypatch.setattr(GroupDRO, "results_version", 2)
    assert store.run_id(spec) != before  # a fixed method is never served from the old code's stored run


def test_attribute_null_and_the_first_attribute_are_one_run(synth_and_clip, tmp_path):
    synth, clip = synth_and_clip
    store = Store(tmp_path / "store")
    implicit = _spec(synth, clip, method="resampling")
    explicit = _spec(synth, clip, method="resampling", method_params={"attribute": "sex"})
    other = _spec(synth, clip, method="resampling", method_params={"attribute": "age"})
    assert store.run_id(implicit) == store.run_id(explicit) != store.run_id(other)
    # a method that reads no attribute keeps null
    assert _spec(synth, clip, method="sam").resolve()["method_params"]["attribute"] is None


def test_a_methods_rows_set_the_steps_of_the_features_loop_schedule():
    from fairfm.adapt.linear_probe import train_linear_probe
    from fairfm.spec import LinearProbeHParams

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float64)
    hp = LinearProbeHParams(epochs=3, batch_size=10, lr=0.1, min_lr=0.0, warmup_epochs=0, schedule_per="iteration",
                            select_by="last", optimizer="sgd")  # fmt: skip
    half = TrainHooks(rows=lambda epoch: np.arange(epoch, 100, 2)[:40])  # 4 steps per epoch, not 10
    result = train_linear_probe(x, y, x, y, hparams=hp, seed=0, hooks=half, groups={"train": np.zeros(100, int)})
    # the cosine over 3 × 4 steps: the last step's lr is lr_at(11 of 12), not lr_at(11 of 30)
    expected = 0.1 * 0.5 * (1 + math.cos(math.pi * 11 / 12))
    assert math.isclose(result.history[-1]["lr"], expected, rel_tol=1e-6)


def test_methods_show_lists_only_the_usages_it_accepts(capsys):
    code, out, _ = run_cli(capsys, "methods", "show", "fair_lora")
    assert code == 0
    usages = out.split("(usages: ")[1].split(")")[0].split(", ")
    assert "lora" in usages and "full_finetune" not in usages and "linear_probe" not in usages
    code, out, _ = run_cli(capsys, "methods", "show", "group_thresholds")
    assert "sam_prompt" not in out and "zero_shot" in out
