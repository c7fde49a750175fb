"""The run spec and the sweep spec: validation errors name file and field, YAML round trip, canonical resolve()."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from fairfm.errors import InputError
from fairfm.spec import (
    HParams,
    LinearProbeHParams,
    RunSpec,
    SweepSpec,
    canonical_json,
    hparams_model,
    list_usages,
    parse_assignments,
)
from fairfm.usages import base as usages_base
from fairfm.usages import register_usage
from tests.results.helpers import make_dataset

BASE = {"model": "tiny_vit", "usage": "linear_probe"}


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "toy", tasks=("disease", "edema"))


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def yaml_error(tmp_path: Path, data) -> str:
    path = write_yaml(tmp_path / "spec.yaml", data)
    with pytest.raises(InputError) as info:
        RunSpec.from_yaml(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message.removeprefix(f"{path}: ")


# -- validation errors ---------------------------------------------------------------------------------------------


def test_unknown_top_level_field_is_an_error(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "sede": 3})
    assert message == "sede: unknown field (check the spelling)"


def test_unknown_hparam_is_an_error_with_its_path(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "hparams": {"lerning_rate": 0.1}})
    assert message == "hparams.lerning_rate: unknown field (check the spelling)"


def test_hparam_out_of_range_names_the_nested_field(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "hparams": {"lr": -0.1}})
    assert message == "hparams.lr: Input should be greater than 0"


def test_wrong_type(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "seed": "three"})
    assert message.startswith("seed: Input should be a valid integer")
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "hparams": {"epochs": [1, 2]}})
    assert message.startswith("hparams.epochs: Input should be a valid integer")


def test_bad_usage_lists_the_known_ones(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), "model": "m", "usage": "probing"})
    assert message.startswith("usage: unknown usage 'probing'; choose one of: ")
    for usage in list_usages():
        assert usage in message


def test_missing_required_field(tmp_path, dataset):
    assert yaml_error(tmp_path, {"dataset": str(dataset), "usage": "lora"}) == "model: required field is missing"


def test_hparams_are_checked_against_the_usage_they_belong_to(tmp_path, dataset):
    # ``rank`` is a LoRA hyper-parameter: valid for lora, an unknown field for linear probing.
    RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "lora", "hparams": {"rank": 4}})
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "hparams": {"rank": 4}})
    assert message == "hparams.rank: unknown field (check the spelling)"


def test_cross_field_and_value_checks(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "hparams": {"lr": 1e-6, "min_lr": 1e-5}})
    assert message == "hparams: min_lr (1e-05) is larger than lr (1e-06)"
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "threshold": "best_f2@val"})
    assert message.startswith("threshold: unknown threshold policy 'best_f2@val'")
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "device": "tpu"})
    assert message.startswith("device: device 'tpu'")
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "bootstrap": -1})
    assert message == "bootstrap: Input should be greater than or equal to 0"
    message = yaml_error(tmp_path, {"dataset": str(dataset), "model": "m", "usage": "zero_shot",
                                    "hparams": {"templates": ["a chest X-ray"]}})  # fmt: skip
    assert message == "hparams.templates: template 'a chest X-ray' has no '{}' slot for the class name"
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "method_params": {"eta": 0.1}})
    assert message == "method_params: method_params given without a method"
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "model": "my model/v2"})
    assert message == "model: 'my model/v2' is not a valid name (letters, digits, '_', '-', '.')"
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "attributes": ["sex", "group_sex"]})
    assert message == "attributes: 'sex' listed twice"
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "hparams": {"lr": float("nan")}})
    assert message.startswith("hparams.lr: Input should be a finite number")


def test_several_errors_report_the_first_and_count_the_rest(tmp_path, dataset):
    message = yaml_error(tmp_path, {"dataset": str(dataset), **BASE, "seed": -1, "bootstrap": "x"})
    assert message.endswith("(and 1 more error(s))")


def test_unreadable_yaml_and_wrong_shapes(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"bad\.yaml: not valid YAML \(line 2"):
        RunSpec.from_yaml(bad)
    listing = write_yaml(tmp_path / "list.yaml", ["a", "b"])
    with pytest.raises(InputError, match=r"list\.yaml: expected a mapping of fields, got list"):
        RunSpec.from_yaml(listing)
    with pytest.raises(InputError, match=r"missing\.yaml: spec file not found"):
        RunSpec.from_yaml(tmp_path / "missing.yaml")


def test_every_usage_has_defaults_that_validate(dataset):
    assert {"zero_shot", "linear_probe", "prototype", "clip_adapter", "lora", "bitfit", "vpt", "adapter",
            "full_finetune", "sam_prompt"} <= set(list_usages())  # fmt: skip
    for usage in list_usages():
        spec = RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": usage})
        assert spec.hparams == hparams_model(usage)().model_dump(mode="json")


def test_usage_specific_defaults_from_the_references(dataset):
    ft = RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "full_finetune"}).typed_hparams()
    assert (ft.optimizer, tuple(ft.betas), ft.layer_decay, ft.drop_path) == ("adamw", (0.9, 0.95), 0.55, 0.2)
    assert (ft.lr, ft.lr_scaling, ft.schedule_per, ft.warmup_epochs) == (2.5e-4, "linear", "iteration", 5)
    lp = RunSpec.from_dict({"dataset": str(dataset), **BASE}).typed_hparams()
    assert isinstance(lp, LinearProbeHParams)
    assert (lp.optimizer, lp.lr, lp.min_lr, lp.weight_decay, lp.batch_size) == ("sgd", 2.5e-4, 1e-5, 0.05, 128)
    lora = RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "lora"}).typed_hparams()
    assert (lora.rank, lora.alpha) == (8, 16)


def test_a_new_usage_is_one_registered_model(monkeypatch, dataset):
    monkeypatch.setattr(usages_base, "_USAGES", dict(usages_base._USAGES))

    class KnnHParams(HParams):
        k: int = Field(5, ge=1)

    def knn_probe(spec, table, tasks, **kwargs):
        raise AssertionError("not run here")

    register_usage("knn_probe", hparams=KnnHParams, trains=True, loop=None)(knn_probe)
    spec = RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "knn_probe", "hparams": {"k": 3}})
    assert spec.hparams == {"k": 3}
    with pytest.raises(InputError, match=r"^spec: hparams\.k: Input should be greater than or equal to 1$"):
        RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "knn_probe", "hparams": {"k": 0}})
    with pytest.raises(ValueError, match="registered twice"):
        register_usage("knn_probe", hparams=type("Other", (HParams,), {}), trains=True, loop=None)(knn_probe)


# -- YAML and canonical form ---------------------------------------------------------------------------------------


def test_yaml_round_trip(tmp_path, dataset):
    spec = RunSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "lora", "seed": 3,
                              "hparams": {"rank": 4, "lr": 3e-4}, "attributes": ["sex"], "method": "group_dro",
                              "method_params": {"step_size": 0.01}, "threshold": 0.3})  # fmt: skip
    path = tmp_path / "out" / "spec.yaml"
    spec.to_yaml(path)
    again = RunSpec.from_yaml(path)
    assert again == spec
    assert again.resolve() == spec.resolve()
    assert again.threshold == "0.3"


def test_yaml_paths_are_relative_to_the_yaml_file(tmp_path, dataset):
    folder = dataset.parent
    path = write_yaml(folder / "spec.yaml", {"dataset": dataset.name, **BASE, "checkpoint": "ckpt/model.safetensors"})
    spec = RunSpec.from_yaml(path)
    resolved = spec.resolve()
    assert resolved["dataset"] == str(dataset.resolve())
    assert resolved["checkpoint"] == str((folder / "ckpt" / "model.safetensors").resolve())


def test_resolve_fills_defaults_from_the_dataset(dataset):
    resolved = RunSpec.from_dict({"dataset": str(dataset), **BASE}).resolve()
    assert resolved["tasks"] == ["disease", "edema"]
    assert resolved["attributes"] == ["sex", "age"]
    assert resolved["split"] == "patient"
    assert resolved["root"] == str(dataset / "raw")
    assert "device" not in resolved and "trust_checkpoint" not in resolved  # how a run executes, not what it is
    assert resolved["hparams"] == LinearProbeHParams().model_dump(mode="json")
    # prefixed column names are accepted and canonicalised
    explicit = RunSpec.from_dict({"dataset": str(dataset), **BASE, "tasks": ["label_disease", "edema"],
                                  "attributes": ["group_sex", "age"], "split": "patient"}).resolve()  # fmt: skip
    assert explicit == resolved


def test_resolve_rejects_what_the_dataset_lacks(tmp_path, dataset):
    with pytest.raises(InputError, match=r"^tasks: .*samples\.parquet has no column 'label_effusion' "
                                         r"\(available: disease, edema\)$"):  # fmt: skip
        RunSpec.from_dict({"dataset": str(dataset), **BASE, "tasks": ["effusion"]}).resolve()
    with pytest.raises(InputError, match=r"^attributes: .* has no column 'group_race'"):
        RunSpec.from_dict({"dataset": str(dataset), **BASE, "attributes": ["race"]}).resolve()
    with pytest.raises(InputError, match=r"^split: the spec asks for 'fairmedfm' but .*dataset\.json was split "
                                         r"with 'patient'"):  # fmt: skip
        RunSpec.from_dict({"dataset": str(dataset), **BASE, "split": "fairmedfm"}).resolve()
    missing = tmp_path / "nowhere"
    with pytest.raises(InputError, match=rf"^dataset: {missing}/dataset\.json not found"):
        RunSpec.from_dict({"dataset": str(missing), **BASE}).resolve()


def test_resolve_is_stable_across_key_order_and_float_spelling(tmp_path, dataset):
    fields = {"dataset": str(dataset), "model": "m", "usage": "lora", "seed": 2, "bootstrap": 200,
              "hparams": {"lr": 0.0001, "rank": 4, "alpha": 8, "weight_decay": 0.0}}  # fmt: skip
    reference = canonical_json(RunSpec.from_dict(fields).resolve())
    rng = random.Random(0)
    for trial in range(5):
        keys = list(fields)
        rng.shuffle(keys)
        hkeys = list(fields["hparams"])
        rng.shuffle(hkeys)
        shuffled = {k: fields[k] for k in keys}
        shuffled["hparams"] = {k: fields["hparams"][k] for k in hkeys}
        path = write_yaml(tmp_path / f"spec{trial}.yaml", shuffled)
        assert canonical_json(RunSpec.from_yaml(path).resolve()) == reference
    # the same numbers spelled differently: 1e-4, an int where a float is expected, -0.0, float noise
    respelled = dict(fields, hparams={"lr": 1e-4, "rank": 4, "alpha": 8.0, "weight_decay": -0.0})
    assert canonical_json(RunSpec.from_dict(respelled).resolve()) == reference
    noisy = dict(fields, hparams={**fields["hparams"], "lr": 0.1 * 0.001})  # 0.00010000000000000002
    assert canonical_json(RunSpec.from_dict(noisy).resolve()) == reference
    # and a real difference is not hidden by the normalisation
    changed = dict(fields, hparams={**fields["hparams"], "lr": 0.00011})
    assert canonical_json(RunSpec.from_dict(changed).resolve()) != reference
    # sorted keys all the way down
    resolved = json.loads(reference)
    assert list(resolved) == sorted(resolved)
    assert list(resolved["hparams"]) == sorted(resolved["hparams"])


def test_replace_validates_again(dataset):
    spec = RunSpec.from_dict({"dataset": str(dataset), **BASE})
    assert spec.replace(seed=4).seed == 4
    with pytest.raises(InputError, match="seed"):
        spec.replace(seed=-4)


# -- sweeps ---------------------------------------------------------------------------------------------------------


def test_sweep_expands_the_cartesian_product_with_seeds(dataset):
    sweep = SweepSpec.from_dict({
        "dataset": str(dataset), "model": ["vit_a", "vit_b"], "usage": ["linear_probe", "lora"],
        "hparams": {"lr": [1e-3, 1e-4, 1e-5], "epochs": 3}, "method": [None, "group_dro"], "seeds": [0, 1, 2],
    })  # fmt: skip
    specs = list(sweep.expand())
    assert len(sweep) == len(specs) == 2 * 2 * 3 * 2 * 3
    got = [(s.model, s.usage, s.hparams["lr"], s.method, s.seed) for s in specs]
    expected = list(itertools.product(["vit_a", "vit_b"], ["linear_probe", "lora"], [1e-3, 1e-4, 1e-5],
                                      [None, "group_dro"], [0, 1, 2]))  # fmt: skip
    assert got == expected
    assert all(s.hparams["epochs"] == 3 for s in specs)
    # each cell carries its own usage's defaults
    assert all(("rank" in s.hparams) == (s.usage == "lora") for s in specs)
    assert len({canonical_json(s.resolve()) for s in specs}) == len(specs)


def test_sweep_explicit_form_and_list_valued_fields(dataset):
    sweep = SweepSpec.from_dict({"base": {"dataset": str(dataset), "model": "m", "usage": "lora",
                                          "attributes": ["sex", "age"], "hparams": {"targets": ["qkv"]}},
                                 "grid": {"hparams.rank": [4, 8]}, "seeds": [5]})  # fmt: skip
    specs = list(sweep.expand())
    assert [(s.hparams["rank"], s.seed) for s in specs] == [(4, 5), (8, 5)]
    assert all(s.attributes == ["sex", "age"] and s.hparams["targets"] == ["qkv"] for s in specs)
    # the flat form keeps list-valued fields (attributes, hparams.targets) as values, not as sweep axes
    flat = SweepSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "lora", "attributes": ["sex"],
                                "hparams": {"targets": ["qkv", "proj"]}})  # fmt: skip
    assert len(flat) == 1
    assert next(flat.expand()).hparams["targets"] == ["qkv", "proj"]


def test_sweep_errors_name_the_file_and_field(tmp_path, dataset):
    path = write_yaml(tmp_path / "sweep.yaml", {"dataset": str(dataset), "model": "m", "usage": "lora",
                                                "hparams": {"rank": [4, 0]}, "seeds": [0, 1]})  # fmt: skip
    with pytest.raises(InputError, match=rf"^{path}: sweep cells 2, 3: hparams\.rank: Input should be greater than or equal to 1$"):
        SweepSpec.from_yaml(path)
    with pytest.raises(InputError, match=r"^sweep: seeds: a seed is listed twice$"):
        SweepSpec.from_dict({"dataset": str(dataset), "model": "m", "usage": "lora", "seeds": [1, 1]})
    with pytest.raises(InputError, match=r"^sweep: grid: model: empty list of values$"):
        SweepSpec.from_dict({"dataset": str(dataset), "model": [], "usage": "lora"})


def test_sweep_yaml_paths_are_relative_to_the_yaml_file(tmp_path, dataset):
    path = write_yaml(dataset.parent / "sweep.yaml", {"dataset": dataset.name, "model": ["a", "b"], "usage": "lora"})
    specs = list(SweepSpec.from_yaml(path).expand())
    assert [s.model for s in specs] == ["a", "b"]
    assert {s.resolve()["dataset"] for s in specs} == {str(dataset.resolve())}


# -- command-line values ---------------------------------------------------------------------------------------------


def test_parse_assignments():
    parsed = parse_assignments(["hparams.lr=1e-3", "attributes=sex,race", "method=null", "seed=2",
                                "hparams.targets=[qkv, proj]", "model=vit_1e3x", "trust_checkpoint=true"])  # fmt: skip
    assert parsed == {"hparams.lr": 1e-3, "attributes": ["sex", "race"], "method": None, "seed": 2,
                      "hparams.targets": ["qkv", "proj"], "model": "vit_1e3x", "trust_checkpoint": True}  # fmt: skip
    with pytest.raises(InputError, match=r"--set 'seed': expected FIELD=VALUE"):
        parse_assignments(["seed"])


def test_load_yaml_with_command_line_values(tmp_path, dataset):
    path = write_yaml(tmp_path / "spec.yaml", {"dataset": str(dataset), "model": "m", "usage": "lora",
                                               "hparams": {"rank": 4, "lr": 1e-4}})  # fmt: skip
    spec = RunSpec.load(path, parse_assignments(["hparams.lr=3e-4", "seed=5", "attributes=sex"]))
    assert (spec.hparams["rank"], spec.hparams["lr"], spec.seed, spec.attributes) == (4, 3e-4, 5, ["sex"])
    # flags alone build a spec too
    flags = RunSpec.load(None, {"dataset": str(dataset), "model": "m", "usage": "lora", "hparams.rank": 4})
    assert flags.hparams["rank"] == 4
    # an error in a flag names the command line; one in the file names the file
    with pytest.raises(InputError, match=r"^command line: hparams\.rank: Input should be greater than or equal to 1"):
        RunSpec.load(path, {"hparams.rank": 0})
    bad = write_yaml(tmp_path / "bad.yaml", {"dataset": str(dataset), "model": "m", "usage": "lora", "sed": 1})
    with pytest.raises(InputError, match=rf"^{bad}: sed: unknown field"):
        RunSpec.load(bad, {"seed": 3})
    with pytest.raises(InputError, match=r"^command line: usage: required field is missing"):
        RunSpec.load(None, {"dataset": str(dataset), "model": "m"})
