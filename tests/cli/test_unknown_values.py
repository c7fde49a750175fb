"""``fairfm runs aggregate`` names a metric or attribute no stored run has instead of answering "no matching runs"
or dropping rows, and ``fairfm --help`` describes what the demo runs (issue 9, B.7)."""

from __future__ import annotations

import re

import pytest

from fairfm import runner
from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    synth = make_synth(tmp_path_factory.mktemp("synth") / "data")
    clip = make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")
    store = Store(tmp_path_factory.mktemp("store") / "store")
    for seed in (0, 1):
        runner.run(RunSpec.from_dict({"dataset": str(synth), "model": "clip", "checkpoint": str(clip),
                                      "usage": "zero_shot", "bootstrap": 0, "seed": seed}), store,
                   progress=False)  # fmt: skip
    return store


def test_an_unknown_metric_is_named_with_the_stored_ones(store, capsys):
    code, out, err = run_cli(capsys, "runs", "aggregate", "--store", store.path, "--metric", "auc_gapp")
    assert code == 2 and "--metric 'auc_gapp': no stored run has it (did you mean 'auc_gap'?" in err
    assert "auc_gap, " in err and "no matching runs" not in out
    code, out, _ = run_cli(capsys, "runs", "aggregate", "--store", store.path, "--metric", "auc_gap")
    assert code == 0 and "auc_gap" in out


def test_an_unknown_attribute_is_named_not_dropped(store, capsys):
    code, out, err = run_cli(capsys, "runs", "aggregate", "--store", store.path, "--attribute", "sexx")
    assert code == 2 and "--attribute 'sexx': no stored run has it (did you mean 'sex'?" in err
    assert re.search(r"stored in .*: age, sex\)", err)
    code, out, _ = run_cli(capsys, "runs", "aggregate", "--store", store.path, "--attribute", "sex", "--json")
    assert code == 0 and '"attribute":"sex"' in out and '"attribute":"age"' not in out


def test_the_help_names_every_usage_the_demo_runs(capsys):
    from fairfm.demo import DEMO_MODELS

    words = {"zero_shot": "zero-shot", "linear_probe": "linear probe", "lora": "LoRA"}
    code, out, _ = run_cli(capsys, "--help")
    flat = " ".join(re.sub(r"[│╭╮╰╯─]", " ", out).split())
    line = flat[flat.index("demo Planted-bias"):][:200]
    assert code == 0
    for usage in {u for *_, usages in DEMO_MODELS for u in usages}:
        assert words[usage] in line, (usage, line)
