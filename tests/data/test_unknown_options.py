"""Nothing unknown is silently ignored by ``fairfm datasets`` (issue 9, B.7): loader options, describe's thresholds
and splits, and a prepared table whose images are not under the root."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from chest_releases import write_chexpert, write_nih

from fairfm.data.prepare import describe, image_presence, load_prepared, write_prepared
from fairfm.data.registry import BOOLEAN, _REGISTRY, _discover, get_dataset
from fairfm.errors import InputError
from tests.conftest import run_cli

_discover()
DATASETS = sorted(_REGISTRY)


def test_an_option_the_dataset_does_not_read_exits_2_naming_it_and_the_valid_ones(tmp_path, capsys):
    root = write_nih(tmp_path / "nih", n_patients=3, images=False)
    code, _, err = run_cli(capsys, "datasets", "prepare", "nih_chestxray14", "--root", root, "--out", tmp_path / "o",
                           "-o", "uncertain=banana")  # fmt: skip
    assert code == 2 and "nih_chestxray14: unknown option 'uncertain' (options of nih_chestxray14: age_edges)" in err
    assert not (tmp_path / "o").exists()


def test_a_value_outside_an_options_choices_exits_2_listing_them(tmp_path, capsys):
    root = write_chexpert(tmp_path / "raw", n_patients=5, demo=None, images=False)
    code, _, err = run_cli(capsys, "datasets", "prepare", "chexpert", "--root", root, "--out", tmp_path / "o",
                           "-o", "uncertain=banana")  # fmt: skip
    assert code == 2 and "chexpert: option uncertain='banana'; expected one of zeros, ones, ignore" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", DATASETS)
def test_every_source_refuses_an_unknown_option_and_bad_values(name):
    declared = {"age_edges": None, **_REGISTRY[name].option_values}
    with pytest.raises(InputError, match=rf"^{name}: unknown option 'no_such_option' \(options of {name}: "
                                         rf"{', '.join(sorted(declared))}\)$"):  # fmt: skip
        get_dataset(name, no_such_option="1")
    for option, valid in declared.items():
        if valid is None:
            continue
        with pytest.raises(InputError, match=rf"^{name}: option {option}='banana'; expected "):
            get_dataset(name, **{option: "banana"})
        if valid is BOOLEAN:  # command-line text is read as a bool, so 'false' really is false
            assert get_dataset(name, **{option: "false"}).options[option] is False
            assert get_dataset(name, **{option: "True"}).options[option] is True
        else:
            assert get_dataset(name, **{option: valid[-1].upper()}).options[option] == valid[-1]


def test_every_option_a_source_reads_is_declared():
    # The static counterpart: an option read in a source's code but not declared would now be refused.
    import ast
    import inspect
    import re

    for name in DATASETS:
        cls = _REGISTRY[name]
        source = "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith("fairfm.data.sources"))
        read = set(re.findall(r"options\.get\(\"(\w+)\"", source)) | set(re.findall(r"\"(\w+)\" in self\.options",
                                                                                   source))  # fmt: skip
        read |= {"uncertain"} if "_uncertain_option" in source else set()
        assert ast.parse(inspect.getsource(inspect.getmodule(cls)))  # the module parses (sanity)
        assert read <= {"age_edges", *cls.option_values}, (name, read - set(cls.option_values))


def test_prepare_says_how_many_referenced_images_exist(tmp_path, capsys):
    missing = write_nih(tmp_path / "no_images", n_patients=6, images=False)
    code, out, _ = run_cli(capsys, "datasets", "prepare", "nih_chestxray14", "--root", missing, "--out",
                           tmp_path / "o1")  # fmt: skip
    frame, _ = load_prepared(tmp_path / "o1")
    assert code == 0 and f"warning: none of {len(frame)} referenced images checked at random exist under" in out
    assert "datasets check" in out

    present = write_nih(tmp_path / "images", n_patients=6, images=True)
    code, out, _ = run_cli(capsys, "datasets", "prepare", "nih_chestxray14", "--root", present, "--out",
                           tmp_path / "o2")  # fmt: skip
    frame, manifest = load_prepared(tmp_path / "o2")
    assert code == 0 and "warning" not in out and f"{len(frame)} of {len(frame)} referenced images" in out
    assert "images_found" not in manifest  # describes the disk, not the data: not part of dataset.json


def test_image_presence_is_a_capped_sample_and_counts_exactly(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(0, 300, 2):  # every other file exists
        (tmp_path / "img" / f"{i}.png").touch()
    table = pd.DataFrame({"path": [f"img/{i}.png" for i in range(300)], "path_mask": [None] * 300})
    capped = image_presence(table, tmp_path, limit=200)
    assert capped["checked"] == 200 and 60 < capped["found"] < 140
    assert image_presence(table, tmp_path, limit=1000) == {"checked": 300, "found": 150}


@pytest.fixture
def prepared(tmp_path):
    from fairfm.data.synth import generate

    generate(tmp_path / "synth", n=80, size=16, seed=0)
    return tmp_path / "synth"


def test_describe_refuses_negative_thresholds(prepared, capsys):
    for flag in ("--min-samples", "--min-positives"):
        code, _, err = run_cli(capsys, "datasets", "describe", prepared, flag, "-3")
        assert code == 2 and flag in err and "Traceback" not in err
        with pytest.raises(InputError, match=f"{flag} -3: expected a count ≥ 0"):
            describe(prepared, **{flag.removeprefix("--").replace("-", "_"): -3})


def test_describe_warns_about_a_missing_split(prepared, capsys):
    frame, manifest = load_prepared(prepared)
    assert set(frame["split"]) == {"train", "val", "test"} and not any("split has no" in w
                                                                       for w in describe(prepared)["warnings"])
    frame["split"] = frame["split"].replace({"val": "train"})
    write_prepared(frame, prepared, manifest)
    code, out, _ = run_cli(capsys, "datasets", "describe", prepared, "--json")
    warnings = json.loads(out)["warnings"]
    assert code == 0 and "the split has no 'val' samples (every run needs val and test)" in warnings
    assert not any("'train'" in w or "'test' samples" in w for w in warnings)
    assert np.isin(["train", "test"], frame["split"]).all()
