"""``fairfm run [SPEC.yaml] [flags]``: every RunSpec field is a flag, flags win over the YAML, errors name the flag,
usage aliases, and a registered dataset name + ``--root`` prepared on the fly (once) into the store."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from fairfm.cli import app
from fairfm.cli.run import FIELD_FLAGS
from fairfm.data.cache import ensure_prepared, prepared_folder, resolve_dataset
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import USAGE_ALIASES, RunSpec, SweepSpec, list_usages
from tests.adapt.helpers import make_tiny_clip
from tests.data.chest_releases import write_chexpert
from tests.results.helpers import make_dataset


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """A prepared folder (samples.parquet + dataset.json) with tasks disease/edema and attributes sex/age."""
    return make_dataset(tmp_path_factory.mktemp("toy") / "toy", tasks=("disease", "edema"))


@pytest.fixture(scope="module")
def chexpert_raw(tmp_path_factory) -> Path:
    """A miniature CheXpert release in its real layout (train.csv, valid.csv, CHEXPERT DEMO, jpgs)."""
    return write_chexpert(tmp_path_factory.mktemp("chexpert") / "raw", n_patients=80, demo="csv")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def printed_spec(run, *args) -> dict:
    result = run("run", *args, "--print-spec")
    assert result.code == 0, result.err
    return yaml.safe_load(result.out)


def files_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*")) if folder.exists() else []


# -- every field is a flag -----------------------------------------------------------------------------------------

#: One example per RunSpec field: the flags that set it and the value the printed spec must then hold.
EXAMPLES = {
    "dataset": (["--dataset", "{toy}"], "{toy}"),
    "root": (["--root", "{tmp}/images"], "{tmp}/images"),
    "view": (["--view", "oct"], "oct"),
    "tasks": (["--tasks", "disease,edema"], ["disease", "edema"]),
    "attributes": (["--attr", "sex", "--attributes", "age"], ["sex", "age"]),
    "split": (["--split", "patient"], "patient"),
    "model": (["--model", "resnet50_scratch"], "resnet50_scratch"),
    "model_options": (["--model-option", "layers=[1,1,1,1]", "--model-option", "base_width=32"],
                      {"layers": [1, 1, 1, 1], "base_width": 32}),
    "checkpoint": (["--checkpoint", "{tmp}/weights.safetensors"], "{tmp}/weights.safetensors"),
    "trust_checkpoint": (["--trust-checkpoint"], True),
    "usage": (["--usage", "lora"], "lora"),
    "method": (["--method", "group_dro"], "group_dro"),
    "method_params": (["--method", "group_dro", "--method-param", "step_size=0.02"], {"attribute": None, "step_size": 0.02, "balanced_sampler": True}),
    "hparams": (["--usage", "lora", "--hp", "rank=4", "--hp", "targets=qkv,proj"], None),
    "seed": (["--seed", "7"], 7),
    "split_seed": (["--split-seed", "0"], 0),
    "threshold": (["--threshold", "0.3"], "0.3"),
    "bootstrap": (["--bootstrap", "0"], 0),
    "device": (["--device", "cuda:1"], "cuda:1"),
}


def test_every_runspec_field_has_a_flag_and_an_example():
    """A new RunSpec field fails here until it gets a flag in FIELD_FLAGS, the command, and EXAMPLES."""
    from fairfm.cli import _register_commands

    _register_commands()
    command = typer.main.get_command(app)
    options = {opt for param in command.commands["run"].params for opt in param.opts + param.secondary_opts}
    fields = set(RunSpec.model_fields)
    assert set(FIELD_FLAGS) == fields
    assert set(EXAMPLES) == fields
    for field, flag in FIELD_FLAGS.items():
        assert flag in options, f"RunSpec.{field}: no {flag} option on 'fairfm run'"
    assert {"--set", "--print-spec", "--attributes", "--no-trust-checkpoint"} <= options


@pytest.mark.parametrize("field", sorted(EXAMPLES))
def test_each_flag_sets_its_field(run, toy, tmp_path, field):
    flags, expected = EXAMPLES[field]
    flags = [f.format(toy=toy, tmp=tmp_path) for f in flags]
    base = {"--dataset": str(toy), "--model": "clip", "--usage": "linear_probe"}
    args = [a for key, value in base.items() if key not in flags for a in (key, value)] + flags
    spec = printed_spec(run, *args)
    if field == "hparams":
        assert spec["hparams"]["rank"] == 4 and spec["hparams"]["targets"] == ["qkv", "proj"]
        assert spec["hparams"]["alpha"] == 16  # the rest are the usage's defaults
    else:
        assert spec[field] == (expected.format(toy=toy, tmp=tmp_path) if isinstance(expected, str) else expected)


def test_flags_give_the_same_spec_as_the_yaml_route(run, toy, tmp_path, monkeypatch):
    (tmp_path / "w.bin").write_bytes(b"weights")
    document = {
        "dataset": str(toy), "root": "images", "tasks": ["disease"], "attributes": ["sex", "age"],
        "split": "patient", "model": "clip", "model_options": {"width": 64}, "checkpoint": "w.bin",
        "trust_checkpoint": True, "usage": "lora", "method": "group_dro", "method_params": {"step_size": 0.1},
        "hparams": {"rank": 4, "lr": 1e-3, "targets": ["qkv"]}, "seed": 3, "threshold": "best_f1@val",
        "bootstrap": 50, "device": "cpu",
    }  # fmt: skip
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(document), encoding="utf-8")
    from_yaml = run("run", spec_file, "--print-spec")
    monkeypatch.chdir(tmp_path)  # relative flag paths are read from the working folder, YAML ones from the file's
    from_flags = run(
        "run", "--dataset", toy, "--root", "images", "--tasks", "disease", "--attr", "sex,age", "--split", "patient",
        "--model", "clip", "--model-option", "width=64", "--checkpoint", "w.bin", "--trust-checkpoint",
        "--usage", "lora", "--method", "group_dro", "--method-param", "step_size=0.1", "--hp", "rank=4", "--hp", "lr=1e-3",
        "--hp", "targets=qkv", "--seed", "3", "--threshold", "best_f1@val", "--bootstrap", "50", "--device", "cpu",
        "--print-spec",
    )  # fmt: skip
    assert from_yaml.code == 0 and from_flags.code == 0, from_yaml.err + from_flags.err
    assert from_flags.out == from_yaml.out
    printed = yaml.safe_load(from_flags.out)
    assert printed["root"] == str(tmp_path / "images") and printed["checkpoint"] == str(tmp_path / "w.bin")
    # the printed spec is itself a spec: it gives the same run id
    again = tmp_path / "again.yaml"
    again.write_text(from_flags.out, encoding="utf-8")
    store = Store(tmp_path / "store")
    assert store.run_id(RunSpec.from_yaml(again)) == store.run_id(RunSpec.from_yaml(spec_file))


def test_flags_override_set_which_overrides_the_yaml(run, toy, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "dataset": str(toy), "model": "clip", "usage": "linear_probe", "seed": 1, "trust_checkpoint": True,
        "hparams": {"lr": 0.1, "epochs": 5}, "model_options": {"a": 1}, "method": "group_dro",
        "attributes": ["sex"],
    }))  # fmt: skip
    spec = printed_spec(run, spec_file)
    assert spec["seed"] == 1 and spec["hparams"]["lr"] == 0.1 and spec["trust_checkpoint"] is True
    assert printed_spec(run, spec_file, "--set", "seed=2")["seed"] == 2
    assert printed_spec(run, spec_file, "--set", "seed=2", "--seed", "3")["seed"] == 3
    spec = printed_spec(run, spec_file, "--hp", "epochs=2", "--model-option", "b=x", "--no-trust-checkpoint",
                        "--method", "null", "--attr", "age", "--usage", "lp")  # fmt: skip
    assert spec["hparams"]["epochs"] == 2 and spec["hparams"]["lr"] == 0.1  # merged into the YAML's hparams
    assert spec["model_options"] == {"a": 1, "b": "x"}
    assert spec["trust_checkpoint"] is False and spec["method"] is None and spec["attributes"] == ["age"]
    assert printed_spec(run, spec_file, "--set", "hparams.lr=0.2", "--hp", "lr=0.3")["hparams"]["lr"] == 0.3


# -- errors: one line, exit 2, nothing written --------------------------------------------------------------------

ERRORS = [
    (["--seed", "abc"], "--seed abc: Input should be a valid integer"),
    (["--seed", "1.5"], "--seed 1.5: Input should be a valid integer"),
    (["--bootstrap", "-1"], "--bootstrap -1: Input should be greater than or equal to 0"),
    (["--hp", "lr=fast"], "--hp lr=fast: Input should be a valid number"),
    (["--hp", "lr=-1"], "--hp lr=-1: Input should be greater than 0"),
    (["--hp", "lerning_rate=1"], "--hp lerning_rate=1: unknown field (check the spelling)"),
    (["--hp", "lr"], "--hp 'lr': expected KEY=VALUE, e.g. lr=1e-3"),
    (["--set", "sede=1"], "command line: sede: unknown field (check the spelling)"),
    (["--set", "hparams.lr=-1"], "command line: hparams.lr: Input should be greater than 0"),
    (["--device", "gpu"], "--device gpu: device 'gpu': choose auto, cpu or cuda"),
    (["--method-param", "eta=1"], "command line: method_params: method_params given without a method"),
    (["--dataset", "chexpert"], "root: dataset 'chexpert' is a dataset name, so root must give its raw release"),
    (["--dataset", "chexpert", "--root", "{tmp}/nowhere"],
     "root: {tmp}/nowhere: raw release folder of dataset 'chexpert' not found"),
    (["--dataset", "chexpert", "--root", "{tmp}"], "chexpert: expected release file not found: {tmp}/"),
]


@pytest.mark.parametrize("flags, expected", ERRORS)
def test_flag_errors_are_one_line_naming_the_flag_and_write_nothing(run, toy, tmp_path, flags, expected):
    flags = [f.format(tmp=tmp_path) for f in flags]
    base = {"--dataset": str(toy), "--model": "clip", "--usage": "linear_probe"}
    args = [a for key, value in base.items() if key not in flags for a in (key, value)] + flags
    store = tmp_path / "store"
    result = run("run", *args, "--store", store, "-q")
    assert result.code == 2
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + expected.format(tmp=tmp_path)), result.err
    assert files_under(store) == []


def test_unknown_usage_lists_every_usage_and_alias(run, toy, tmp_path):
    result = run("run", "--dataset", toy, "--model", "clip", "--usage", "probing", "--store", tmp_path / "s")
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert result.err.startswith("error: --usage probing: unknown usage 'probing'; choose one of: ")
    for usage in list_usages():
        assert usage in result.err
    for alias in ("lp=linear_probe", "zs=zero_shot", "ft=full_finetune", "sam=sam_prompt"):
        assert alias in result.err
    assert not (tmp_path / "s").exists()


def test_a_name_that_is_neither_a_folder_nor_a_dataset_names_both(run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("run", "--dataset", "chexpret", "--root", tmp_path, "--model", "clip", "--usage", "lp",
                 "--store", tmp_path / "s")  # fmt: skip
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1
    assert (f"dataset: 'chexpret' is neither a prepared dataset folder ({tmp_path / 'chexpret' / 'dataset.json'} "
            "not found) nor a registered dataset name (known: ") in result.err  # fmt: skip
    assert "chexpert" in result.err and "mimic_cxr" in result.err and result.err.rstrip().endswith(
        "a raw release is given as NAME with its folder as root")
    assert not (tmp_path / "s").exists()


def test_missing_required_fields_name_their_flag(run, toy, tmp_path):
    result = run("run", "--dataset", toy, "--usage", "lp")
    assert result.code == 2 and result.err.strip() == "error: command line: model: required field is missing " \
                                                      "(give --model)"  # fmt: skip
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": str(toy), "model": "clip"}))
    result = run("run", spec_file)
    assert result.code == 2
    assert result.err.strip() == f"error: {spec_file}: usage: required field is missing (set it in spec.yaml or " \
                                 "give --usage)"  # fmt: skip
    assert run("run", spec_file, "--usage", "zs", "--print-spec").code == 0


def test_an_error_in_the_yaml_names_the_file_even_with_flags(run, toy, tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": str(toy), "model": "clip", "usage": "lp", "bootstrap": -5}))
    result = run("run", spec_file, "--seed", "2")
    assert result.code == 2
    assert result.err.strip() == f"error: {spec_file}: bootstrap: Input should be greater than or equal to 0"


# -- usage aliases ---------------------------------------------------------------------------------------------------


def test_usage_aliases_resolve_to_the_canonical_name_and_the_same_run_id(toy, tmp_path):
    store = Store(tmp_path / "store")
    base = {"dataset": str(toy), "model": "clip", "bootstrap": 10}
    for alias, usage in USAGE_ALIASES.items():
        model = {"model": "medsam"} if usage == "sam_prompt" else {}  # a usage needs a model of its family
        for spelling in (alias, alias.upper()):
            spec = RunSpec.from_dict({**base, **model, "usage": spelling})
            assert spec.usage == usage
            assert store.run_id(spec) == store.run_id(RunSpec.from_dict({**base, **model, "usage": usage}))
    assert RunSpec.from_dict({**base, "usage": "linear-probe"}).usage == "linear_probe"
    # aliased hyper-parameters are validated against the canonical usage's model
    with pytest.raises(InputError, match=r"^spec: hparams\.rank: unknown field"):
        RunSpec.from_dict({**base, "usage": "lp", "hparams": {"rank": 4}})
    sweep = SweepSpec.from_dict({**base, "usage": ["lp", "zs", "ft"]})
    assert [spec.usage for spec in sweep.expand()] == ["linear_probe", "zero_shot", "full_finetune"]


def test_usage_alias_on_the_command_line(run, toy):
    assert printed_spec(run, "--dataset", toy, "--model", "clip", "--usage", "zs")["usage"] == "zero_shot"
    assert printed_spec(run, "--dataset", toy, "--model", "clip", "--usage", "full")["usage"] == "full_finetune"


# -- a dataset name in a spec file ----------------------------------------------------------------------------------


def test_a_registered_name_in_yaml_stays_a_name_and_other_values_are_paths(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("dataset: chexpert\nroot: raw\nmodel: clip\nusage: lp\n")
    spec = RunSpec.from_yaml(spec_file)
    assert str(spec.dataset) == "chexpert" and spec.root == tmp_path / "raw"
    assert str(RunSpec.load(spec_file).dataset) == "chexpert"
    (tmp_path / "chexpert").mkdir()  # a folder of that name beside the spec wins: it is a path
    assert RunSpec.from_yaml(spec_file).dataset == tmp_path / "chexpert"
    spec_file.write_text("dataset: my_data\nmodel: clip\nusage: lp\n")  # not a registered name: a relative path
    assert RunSpec.from_yaml(spec_file).dataset == tmp_path / "my_data"


# -- preparing a dataset by name --------------------------------------------------------------------------------------


def _count_prepares(monkeypatch) -> list[tuple]:
    module = importlib.import_module("fairfm.data.prepare")
    original, calls = module.prepare, []

    def counting(name, root, out, **kwargs):
        calls.append((name, kwargs.get("split"), kwargs.get("seed")))
        return original(name, root, out, **kwargs)

    monkeypatch.setattr(module, "prepare", counting)
    return calls


LP = ["--model", "clip", "--usage", "lp", "--attr", "sex,race", "--tasks", "no_finding", "--hp", "epochs=3",
      "--hp", "batch_size=32", "--bootstrap", "20", "-q"]  # fmt: skip


def test_run_prepares_a_named_dataset_once_and_stores_the_run(run, chexpert_raw, clip_dir, tmp_path, monkeypatch):
    """The issue's command on a miniature CheXpert release: prepared on the fly, then found again (not prepared and
    not recomputed); the spec-file route with ``dataset: chexpert`` gives the same run."""
    prepares = _count_prepares(monkeypatch)
    store = tmp_path / "store"
    args = ["run", "--dataset", "chexpert", "--root", chexpert_raw, "--checkpoint", clip_dir, *LP, "--store", store]
    first = run(*args)
    assert first.code == 0, first.err
    assert prepares == [("chexpert", "patient", 0)]
    (folder,) = [p for p in (store / "datasets").iterdir()]
    assert folder.name.startswith("chexpert-patient-seed0-")
    assert f"dataset chexpert: prepared from {chexpert_raw.resolve()} → {folder}" in first.out
    manifest = json.loads((folder / "dataset.json").read_text())
    assert manifest["dataset"] == "chexpert" and manifest["root"] == str(chexpert_raw.resolve())
    assert manifest["split"]["policy"] == "patient" and manifest["split"]["seed"] == 0
    (record,) = Store(store).list()
    assert record.spec["dataset"] == str(folder) and record.spec["usage"] == "linear_probe"
    assert record.spec["attributes"] == ["sex", "race"] and record.spec["split"] == "patient"
    assert f"run {record.run_id}: computed" in first.out

    second = run(*args)
    assert second.code == 0, second.err
    assert len(prepares) == 1  # not prepared again
    assert "dataset chexpert: found (prepared earlier" in second.out
    assert f"run {record.run_id}: found in the store (not recomputed)" in second.out

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": "chexpert", "root": str(chexpert_raw), "model": "clip",
                                         "checkpoint": str(clip_dir), "usage": "linear_probe",
                                         "attributes": ["sex", "race"], "tasks": ["no_finding"],
                                         "hparams": {"epochs": 3, "batch_size": 32}, "bootstrap": 20}))  # fmt: skip
    from_yaml = run("run", spec_file, "--store", store, "-q")
    assert from_yaml.code == 0 and f"run {record.run_id}: found in the store" in from_yaml.out
    assert len(prepares) == 1 and len(Store(store)) == 1

    # --print-spec points at the prepared folder once it exists
    assert printed_spec(run, *args[1:])["dataset"] == str(folder)

    # another training seed shares the split (not prepared again); another split seed is its own folder
    third = run(*args, "--seed", "1")
    assert third.code == 0, third.err
    assert len(prepares) == 1 and len(list((store / "datasets").iterdir())) == 1 and len(Store(store)) == 2
    fourth = run(*args, "--split-seed", "1")
    assert fourth.code == 0, fourth.err
    assert prepares[-1] == ("chexpert", "patient", 1) and len(list((store / "datasets").iterdir())) == 2
    assert len(Store(store)) == 3


def test_print_spec_does_not_prepare(run, chexpert_raw, tmp_path, monkeypatch):
    prepares = _count_prepares(monkeypatch)
    store = tmp_path / "store"
    result = run("run", "--dataset", "chexpert", "--root", chexpert_raw, "--model", "clip", "--usage", "lp",
                 "--seed", "4", "--split-seed", "5", "--store", store, "--print-spec")  # fmt: skip
    assert result.code == 0, result.err
    expected = prepared_folder(store, "chexpert", chexpert_raw, split="patient", seed=5)
    assert result.out.startswith(f"# dataset 'chexpert' is not prepared yet: the first run prepares it from "
                                 f"{chexpert_raw.resolve()} into {expected}\n")  # fmt: skip
    spec = yaml.safe_load(result.out)
    assert spec["dataset"] == "chexpert" and spec["root"] == str(chexpert_raw.resolve()) and spec["seed"] == 4
    assert spec["split_seed"] == 5
    assert prepares == [] and not store.exists()


def test_a_killed_prepare_leaves_no_folder_and_the_next_call_prepares(chexpert_raw, tmp_path, monkeypatch):
    module = importlib.import_module("fairfm.data.prepare")
    original = module.prepare

    def crash(name, root, out, **kwargs):
        original(name, root, out, **kwargs)  # every file written ...
        raise KeyboardInterrupt  # ... but killed before the folder is renamed into place

    monkeypatch.setattr(module, "prepare", crash)
    store = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        ensure_prepared(store, "chexpert", chexpert_raw, seed=2)
    assert list((store / "datasets").iterdir()) == []
    monkeypatch.setattr(module, "prepare", original)
    # a temporary folder left by a process that no longer exists is removed by the next prepare
    folder = prepared_folder(store, "chexpert", chexpert_raw, seed=2)
    from fairfm.tableio import host_tag

    abandoned = store / "datasets" / f".{folder.name}.{host_tag()}.999999999.x"
    abandoned.mkdir()
    (abandoned / "samples.parquet").write_text("half")
    prepared = ensure_prepared(store, "chexpert", chexpert_raw, seed=2)
    assert prepared.prepared_now and prepared.folder == folder
    assert sorted(p.name for p in (store / "datasets").iterdir()) == [folder.name]
    assert not ensure_prepared(store, "chexpert", chexpert_raw, seed=2).prepared_now


def test_an_edited_release_is_prepared_into_a_new_folder(tmp_path):
    raw = tmp_path / "raw"
    write_chexpert(raw, n_patients=5, demo="csv", images=False)
    before = prepared_folder(tmp_path / "s", "chexpert", raw, split="patient", seed=0)
    assert before == prepared_folder(tmp_path / "s", "chexpert", raw, split="patient", seed=0)  # stable
    train = raw / "CheXpert-v1.0-small" / "train.csv"
    train.write_text(train.read_text() + train.read_text().splitlines()[-1] + "\n")
    assert prepared_folder(tmp_path / "s", "chexpert", raw, split="patient", seed=0) != before
    assert prepared_folder(tmp_path / "s", "chexpert", raw, split="official", seed=0) != before
    with pytest.raises(InputError, match=r"^split: unknown split policy 'nope'"):
        prepared_folder(tmp_path / "s", "chexpert", raw, split="nope")


def test_resolve_dataset_keeps_a_prepared_folder(toy, tmp_path, monkeypatch):
    spec = RunSpec.from_dict({"dataset": str(toy), "model": "clip", "usage": "lp"})
    resolved, prepared = resolve_dataset(spec, tmp_path / "store")
    assert resolved is spec and prepared is None
    # a name never reaches the run id unprepared: hashing it says how to prepare it
    monkeypatch.chdir(tmp_path)
    named = RunSpec.from_dict({"dataset": "chexpert", "root": str(tmp_path), "model": "clip", "usage": "lp"})
    with pytest.raises(InputError, match=r"^dataset: 'chexpert' is not a prepared folder .*resolve_dataset\(spec"):
        Store(tmp_path / "store").run_id(named)
    raw_folder = tmp_path / "not_prepared"
    raw_folder.mkdir()
    with pytest.raises(InputError, match="neither a prepared dataset folder"):
        resolve_dataset(spec.replace(dataset=str(raw_folder)), tmp_path / "store")


def test_the_run_command_keeps_heavy_imports_out_of_startup():
    # ``fairfm --help`` imports the command module: no torch, pandas or pydantic yet; the dataset cache no torch.
    code = ("import sys, fairfm.cli.run; print(*(m in sys.modules for m in ('torch', 'pandas', 'pydantic'))); "
            "import fairfm.data.cache; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "False", "False"]
