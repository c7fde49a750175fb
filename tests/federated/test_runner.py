"""The federated runner: spec validation, client training pieces in-process, and two real Flower simulations
(a federation that crashes in round 2, then its resumption) on tiny random-weight CLIP models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairfm.errors import InputError


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    """A planted-bias dataset whose patients are split over two sites (a prepared dataset with a `site` column)."""
    from fairfm.data.synth import generate

    folder = tmp_path_factory.mktemp("synth") / "data"
    generate(folder, n=160, size=32, seed=0, fractions=(0.5, 0.25, 0.25))
    samples = folder / "samples.parquet"
    table = pd.read_parquet(samples)
    codes = pd.factorize(table["patient_id"].astype(str))[0]
    table["site"] = np.where(codes % 2 == 0, "north", "south")
    table.to_parquet(samples, index=False)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from tests.adapt.helpers import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def spec_data(site_dir: Path, clip_dir: Path, **federated) -> dict:
    return {"dataset": str(site_dir), "model": "clip", "checkpoint": str(clip_dir), "usage": "bitfit",
            "hparams": {"batch_size": 32, "lr": 0.05, "optimizer": "sgd", "num_workers": 0, "amp": False},
            "bootstrap": 20, "seed": 3, "attributes": ["sex"],
            "federated": {"strategy": "fedavg", "rounds": 2, "local_epochs": 1, **federated}}  # fmt: skip


# ------------------------------------------------------------------------------------------------ spec


def test_fairfedmed_profile_fills_what_the_spec_leaves_out_and_explicit_values_win(site_dir, clip_dir):
    from fairfm.federated.spec import FederatedSpec

    data = spec_data(site_dir, clip_dir, profile="fairfedmed")
    data["federated"].pop("rounds")
    spec = FederatedSpec.from_dict(data)
    assert spec.federated.rounds == 50 and spec.federated.local_epochs == 1
    hp = spec.run.typed_hparams()
    assert (hp.optimizer, hp.lr, hp.momentum, hp.weight_decay, hp.batch_size) == ("sgd", 0.05, 0.9, 5e-4, 32)
    assert spec.run.threshold == "0.5"
    assert (hp.schedule, hp.warmup_epochs, hp.select_by) == ("constant", 0, "last")
    assert spec.defaults_applied["federated.rounds"] == "fairfedmed"
    assert "hparams.lr" not in spec.defaults_applied  # given explicitly
    assert spec.fraction_for(3) == 0.8 and spec.fraction_for(2) == 1.0
    assert FederatedSpec.from_dict(spec_data(site_dir, clip_dir, fraction=0.5)).fraction_for(3) == 0.5


@pytest.mark.parametrize("change,message", [
    ({"federated": {"rounds": 0}}, "federated.rounds"),
    ({"federated": {"strategy": "fedavg", "lokal_epochs": 1}}, "federated.lokal_epochs: unknown field"),
    ({"federated": {"clients": {"by": "dirichlet_label"}}}, "federated.clients.n_clients: required"),
    ({"federated": {"profile": "harvard"}}, "federated.profile"),
    ({"usage": "linear_probe"}, "usage: 'linear_probe' cannot be federated"),
    ({"hparams": {"lerning_rate": 1}}, "hparams.lerning_rate: unknown field"),
    ({"federated": None}, "federated: required block is missing"),
])  # fmt: skip
def test_spec_errors_name_the_key(site_dir, clip_dir, change, message):
    from fairfm.federated.spec import FederatedSpec

    data = spec_data(site_dir, clip_dir)
    for key, value in change.items():
        if value is None:
            data.pop(key)
        elif key == "hparams":
            data["hparams"] = value
        else:
            data[key] = value
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FederatedSpec.from_dict(data, source="fl.yaml")


# ------------------------------------------------------------------------------------------------ pieces without Ray


def test_proximal_step_adds_the_gradient_of_the_proximal_term(site_dir, clip_dir):
    """The step's gradient equals autograd's of loss + (μ/2)‖w − w_g‖² (an independent oracle)."""
    import torch

    from fairfm.federated.client import proximal_step

    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    anchor = {name: p.detach() + torch.randn_like(p) for name, p in layer.named_parameters()}
    x, mu = torch.randn(5, 4), 0.7
    # the oracle: the term added to the loss, differentiated by autograd
    oracle = torch.nn.Linear(4, 3)
    oracle.load_state_dict(layer.state_dict())
    loss = oracle(x).pow(2).sum() + mu / 2 * sum(((p - anchor[n]) ** 2).sum() for n, p in oracle.named_parameters())
    loss.backward()
    expected = {n: p.grad.clone() for n, p in oracle.named_parameters()}

    layer(x).pow(2).sum().backward()
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in layer.named_parameters()}
    proximal_step(mu, dict(layer.named_parameters()), anchor)(optimizer, lambda: None)
    for name, p in layer.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6)
        assert torch.allclose(p.detach(), before[name] - 0.1 * expected[name], atol=1e-6)


def test_fedprox_refuses_a_method_with_its_own_step():
    from fairfm.federated.client import with_proximal
    from fairfm.mitigate.base import TrainHooks

    import torch

    with pytest.raises(InputError, match="strategy 'fedprox'.*method 'sam'"):
        with_proximal(TrainHooks(step=lambda o, c: None), 0.5, torch.nn.Linear(2, 1), {}, "sam")
    assert with_proximal(None, 0.0, torch.nn.Linear(2, 1), {}, None) is None


def test_local_patterns_keep_tensors_on_the_client():
    from fairfm.federated.client import split_names

    names = ["backbone.a.bias", "backbone.local_ctx", "head.weight"]
    assert split_names(names, "") == (names, [])
    assert split_names(names, "local_ctx, head.") == (["backbone.a.bias"], ["backbone.local_ctx", "head.weight"])
    assert split_names(names, "*") == ([], names)


def test_a_client_without_both_classes_or_a_group_is_refused_before_ray(site_dir, clip_dir, tmp_path):
    from fairfm.federated.runner import plan_federation
    from fairfm.federated.spec import FederatedSpec
    from fairfm.results import Store

    folder = tmp_path / "data"
    import shutil

    shutil.copytree(site_dir, folder)
    table = pd.read_parquet(folder / "samples.parquet")
    table.loc[(table["site"] == "south") & (table["split"] == "val"), "label_disease"] = 0
    table.to_parquet(folder / "samples.parquet", index=False)
    spec = FederatedSpec.from_dict(spec_data(folder, clip_dir))
    # the partition refuses it, naming the site, split and missing class
    with pytest.raises(InputError, match=r"south/val/class 1; every client needs train, val and test rows"):
        plan_federation(spec, Store(tmp_path / "store"))
    table = pd.read_parquet(site_dir / "samples.parquet")
    table = table[~((table["site"] == "north") & (table["group_sex"] == "F"))]
    table.to_parquet(folder / "samples.parquet", index=False)
    data = spec_data(folder, clip_dir)
    data.update(method="fair_lora", method_params={"rank": 2})
    with pytest.raises(InputError, match="client 'north' has no row of group 'F' of 'sex'"):
        plan_federation(FederatedSpec.from_dict(data), Store(tmp_path / "store2"))


def test_the_run_id_depends_on_the_federation_not_on_the_call(site_dir, clip_dir, tmp_path):
    from fairfm.federated.runner import plan_federation
    from fairfm.federated.spec import FederatedSpec
    from fairfm.results import Store

    store = Store(tmp_path / "store")
    first = plan_federation(FederatedSpec.from_dict(spec_data(site_dir, clip_dir)), store)
    again = plan_federation(FederatedSpec.from_dict(spec_data(site_dir, clip_dir)), store)
    other = plan_federation(FederatedSpec.from_dict(spec_data(site_dir, clip_dir, rounds=3)), store)
    assert first.run_id == again.run_id != other.run_id
    assert first.document["usage"] == "federated" and first.document["local_usage"] == "bitfit"
    assert first.clients == ["north", "south"]


# ------------------------------------------------------------------------------------------------ simulations


class Crash(RuntimeError):
    pass


def test_a_crashed_federation_resumes_after_its_last_completed_round(site_dir, clip_dir, tmp_path, capsys):
    """Two real simulations: the first crashes in round 2 (before its checkpoint), the second resumes — round 1 is
    not trained again — and the stored run equals a sequential, Flower-free replay of the same federation."""
    import dataclasses

    from sklearn.metrics import roc_auc_score

    from fairfm.federated.client import train_client, train_log
    from fairfm.federated.runner import plan_federation, run_federated
    from fairfm.federated.server import FederationCheckpoint
    from fairfm.federated.spec import FederatedSpec
    from fairfm.results import Store
    from fairfm.runner import report_from_predictions

    from fairfm.federated.aggregation import sample_clients

    store = Store(tmp_path / "store")
    # half the clients per round after round 1: the resumed round must train the same site an uninterrupted run
    # trains (clients are sampled by partition, and node ids are new in every simulation)
    spec = FederatedSpec.from_dict(spec_data(site_dir, clip_dir, fraction=0.5))
    plan = plan_federation(spec, store)
    job = plan.job
    (chosen,) = sample_clients(2, 0.5, 2, spec.run.seed)

    def crash_in_round_2(server_round, entry):
        if server_round == 2:
            raise Crash("simulated crash in round 2")

    with pytest.raises(Crash):
        run_federated(spec, store, progress=False, on_round=crash_in_round_2)
    saved = FederationCheckpoint(job.workdir).load()
    assert saved.round == 1 and not store.exists(plan.run_id)
    seen = []
    record = run_federated(spec, store, progress=False, on_round=lambda r, e: seen.append(r))
    assert seen == [2]
    for client in range(2):  # round 1 once (first simulation); the sampled client: round 2 twice (crash, resume)
        expected = [1, 2, 2] if client == chosen else [1]
        assert [entry["round"] for entry in train_log(job, client)] == expected

    # The same federation replayed in this process, client by client, FedAvg by hand.
    replay = dataclasses.replace(job, workdir=str(tmp_path / "replay"))
    from fairfm.federated.runner import initial_arrays

    state = initial_arrays(replay)
    for server_round, trained in ((1, (0, 1)), (2, (chosen,))):
        updates = [train_client(replay, k, server_round, state, None, local_epochs=1) for k in trained]
        weights = np.array([u.metrics["num-examples"] for u in updates], dtype=np.float64)
        state = {name: sum(w * u.shared[name] for w, u in zip(weights / weights.sum(), updates))
                 for name in updates[0].shared}  # fmt: skip
    final = FederationCheckpoint(job.workdir).load()
    assert final.round == 2 and set(final.arrays) == set(state)
    for name in state:
        np.testing.assert_allclose(final.arrays[name], state[name], rtol=1e-4, atol=1e-5)

    predictions = record.predictions
    assert set(predictions["site"]) == {"north", "south"}
    assert list(predictions.columns[:8]) == ["run_id", "sample_id", "task", "split", "y_true", "y_score",
                                             "group_sex", "site"]  # fmt: skip
    table = pd.read_parquet(site_dir / "samples.parquet").set_index("sample_id")
    assert (table.loc[predictions["sample_id"], "site"].to_numpy() == predictions["site"].to_numpy()).all()
    expected = report_from_predictions(predictions.drop(columns=["run_id"]), spec.run).to_metric_table(plan.run_id)
    stored = record.metrics.sort_values(["task", "attribute", "group", "metric"]).reset_index(drop=True)
    expected = expected.sort_values(["task", "attribute", "group", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(stored[["metric", "value"]], expected[["metric", "value"]], check_dtype=False)
    test = predictions[predictions["split"] == "test"]
    meta = record.meta
    pooled = record.metrics[(record.metrics["metric"] == "auc") & (record.metrics["attribute"] == "__all__")]
    assert pooled["value"].iloc[0] == pytest.approx(roc_auc_score(test["y_true"], test["y_score"]))
    per_site = [roc_auc_score(rows["y_true"], rows["y_score"]) for _, rows in test.groupby("site")]
    assert meta["client_averaged"]["metrics"]["disease"]["auc"]["value"] == pytest.approx(np.mean(per_site))
    north = test[test["site"] == "north"]
    assert meta["per_client"]["north"]["disease"]["auc"]["value"] == pytest.approx(
        roc_auc_score(north["y_true"], north["y_score"]))
    fed = meta["federated"]
    assert fed["resumed_from_round"] == 1 and [h["round"] for h in fed["history"]] == [1, 2]
    assert set(fed["history"][1]["val_auc"]) == {"0", "1"} and fed["strategy"] == "fedavg"
    # Asked again: found in the store, nothing simulated.
    assert run_federated(spec, store, progress=False).run_id == record.run_id
    # The CLI finds it too and prints the pooled and client-averaged table with the run id.
    import yaml

    from fairfm.cli import main

    spec_file = tmp_path / "fl.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data(site_dir, clip_dir, fraction=0.5)))
    with pytest.raises(SystemExit) as exit_info:
        main(["fl", "run", str(spec_file), "--store", str(tmp_path / "store"), "--quiet"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"run {record.run_id}" in out and "client-averaged" in out and "pooled" in out


@pytest.mark.parametrize("args,message", [
    (["--rounds", "0"], "federated.rounds"),
    (["--strategy", "fedfancy"], "fedfancy"),
])  # fmt: skip
def test_cli_errors_are_one_line_with_exit_code_2(site_dir, clip_dir, tmp_path, capsys, args, message):
    import yaml

    from fairfm.cli import main

    spec_file = tmp_path / "fl.yaml"
    spec_file.write_text(yaml.safe_dump(spec_data(site_dir, clip_dir)))
    with pytest.raises(SystemExit) as exit_info:
        main(["fl", "run", str(spec_file), "--store", str(tmp_path / "store"), "-q", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_cli_names_a_missing_spec_file(tmp_path, capsys):
    from fairfm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["fl", "run", str(tmp_path / "nope.yaml")])
    assert exit_info.value.code == 2
    assert "nope.yaml: spec file not found" in capsys.readouterr().err


def test_fair_lora_and_fedotp_clients_send_what_their_strategy_aggregates(site_dir, clip_dir, tmp_path):
    """Without Ray: a client of a FairLoRA federation sends its S rows with its per-group counts, and a FedOTP
    (coop) client keeps its local prompts — the strategies' local patterns — and sends only the global ones."""
    from fairfm.federated.aggregation import fair_lora_average
    from fairfm.federated.client import train_client
    from fairfm.federated.runner import initial_arrays, plan_federation
    from fairfm.federated.spec import FederatedSpec
    from fairfm.federated.strategies import STRATEGIES
    from fairfm.results import Store

    data = spec_data(site_dir, clip_dir, strategy="fair_lora")
    data.update(method="fair_lora", method_params={"rank": 2})
    plan = plan_federation(FederatedSpec.from_dict(data), Store(tmp_path / "store"))
    state = initial_arrays(plan.job)
    updates = [train_client(plan.job, k, 1, state, None, local_epochs=1) for k in range(2)]
    s_names = [n for n in updates[0].shared if n.endswith("lora_S")]
    assert s_names and all(updates[0].shared[n].shape == (2, 2) for n in s_names)  # one row per sex group
    table = pd.read_parquet(site_dir / "samples.parquet")
    for k, site in enumerate(plan.job.clients):
        train = table[(table["site"] == site) & (table["split"] == "train")]
        assert updates[k].metrics["group-counts"] == [int((train["group_sex"] == g).sum()) for g in ("F", "M")]
    merged = fair_lora_average([u.shared for u in updates], [u.metrics["num-examples"] for u in updates],
                               np.array([u.metrics["group-counts"] for u in updates]))  # fmt: skip
    assert set(merged) == set(updates[0].shared)

    data = spec_data(site_dir, clip_dir, strategy="fedotp")
    data.update(usage="coop", hparams={"batch_size": 32, "lr": 0.01, "optimizer": "sgd", "num_workers": 0,
                                       "num_prompts": 2, "local_prompts": 1, "n_ctx": 2, "ot": "unbalanced"})
    plan = plan_federation(FederatedSpec.from_dict(data), Store(tmp_path / "store2"))
    patterns = ",".join(STRATEGIES["fedotp"].local_patterns)
    state = initial_arrays(plan.job)
    update = train_client(plan.job, 0, 1, state, None, local_epochs=1, patterns=patterns)
    assert list(update.shared) == ["prompt_learner.ctx"] and list(update.local) == ["prompt_learner.local_ctx"]
    assert not np.allclose(update.shared["prompt_learner.ctx"], state["prompt_learner.ctx"])  # it trained


@pytest.mark.parametrize("change,message", [
    ({"federated": {"strategy": "fair_lora"}}, "'fair_lora' needs method fair_lora with per-group singular values"),
    ({"federated": {"strategy": "sv_lora"}, "method": "fair_lora", "method_params": {"rank": 2}},
     "'sv_lora' needs method fair_lora with singular_values: shared"),
    ({"federated": {"strategy": "fedotp"}}, "'fedotp' needs usage coop with local_prompts ≥ 1"),
    ({"federated": {"strategy": "lora"}}, "'lora' needs usage lora"),
    ({"federated": {"strategy": "fedprox"}, "method": "sam"}, "'fedprox' adds its proximal term"),
])  # fmt: skip
def test_a_strategy_that_does_not_fit_the_run_is_refused_before_ray(site_dir, clip_dir, tmp_path, change, message):
    from fairfm.federated.runner import plan_federation
    from fairfm.federated.spec import FederatedSpec
    from fairfm.results import Store

    data = spec_data(site_dir, clip_dir)
    federated = {**data["federated"], **change.pop("federated")}
    data.update(change, federated=federated)
    with pytest.raises(InputError, match=message):
        plan_federation(FederatedSpec.from_dict(data), Store(tmp_path / "store"))


def test_default_strategy_parameters_and_the_partition_seed_in_the_run_id(site_dir, clip_dir, tmp_path):
    from fairfm.federated.runner import plan_federation
    from fairfm.federated.spec import FederatedSpec
    from fairfm.results import Store

    def run_id(**federated) -> str:
        return plan_federation(FederatedSpec.from_dict(spec_data(site_dir, clip_dir, **federated)),
                               Store(tmp_path / "store")).run_id  # fmt: skip

    # FedProx's default μ given or not: one federation; another μ: another
    assert run_id(strategy="fedprox") == run_id(strategy="fedprox", strategy_params={"mu": 0.5})
    assert run_id(strategy="fedprox") != run_id(strategy="fedprox", strategy_params={"mu": 0.1})
    # a partition seed given explicitly is part of the federation
    assert run_id(clients={"by": "site"}) != run_id(clients={"by": "site", "seed": 7})
