"""Loss- and optimiser-level methods: FIS, SAM / ASAM / GSAM, SWAD / SWA and FairCLIP's Sinkhorn loss.

Each core computation against a hand computation or an independent oracle; every method end to end through
``fairfm run``; FIS's direction on planted under-representation; the clip_head loop honouring a method's hooks.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfm.mitigate.base import TrainContext, build_method
from tests.conftest import run_cli
from tests.mitigate.planted import GROUPS, group_auc_gap, planted_features, train_probe


def _context(n_train: int = 8, epochs: int = 5, loop: str = "features") -> TrainContext:
    groups = np.arange(n_train) % 2
    return TrainContext(loop=loop, tasks=["y"], attribute="group", group_names=GROUPS, train_groups=groups,
                        train_labels=(np.arange(n_train) % 2)[:, None].astype(float), seed=0, epochs=epochs,
                        batch_size=4)  # fmt: skip


# --------------------------------------------------------------------------------------------------------- SAM


def _quadratic_step(method: str, params: dict, w0: np.ndarray, a: np.ndarray, lr: float) -> np.ndarray:
    """One loop-like step of ``method`` on L(w) = ½ wᵀAw with SGD: first backward, then the method's step."""
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    matrix = torch.tensor(a, dtype=torch.float64)
    optimizer = torch.optim.SGD([w], lr=lr)
    hooks = build_method(method, params).training_hooks(_context())

    def loss() -> torch.Tensor:
        return 0.5 * w @ matrix @ w

    optimizer.zero_grad()
    loss().backward()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        again = loss()
        again.backward()
        return again

    hooks.step(optimizer, closure)
    return w.detach().numpy()


W0 = np.array([1.0, -2.0, 0.5])
A = np.diag([3.0, 1.0, 0.2]) + 0.1


def test_sam_steps_with_the_gradient_at_the_perturbed_weights():
    rho, lr = 0.3, 0.1
    g = A @ W0
    expected = W0 - lr * A @ (W0 + rho * g / np.linalg.norm(g))  # Foret et al.: ε = ρ g / ‖g‖
    got = _quadratic_step("sam", {"rho": rho, "adaptive": False}, W0, A, lr)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert not np.allclose(got, W0 - lr * g)  # not a plain SGD step


def test_asam_scales_the_perturbation_by_the_weights():
    rho, lr = 0.3, 0.1
    g = A @ W0
    epsilon = rho * W0**2 * g / np.linalg.norm(np.abs(W0) * g)  # Kwon et al.: ε = ρ T²g / ‖T g‖, T = |w|
    expected = W0 - lr * A @ (W0 + epsilon)
    np.testing.assert_allclose(_quadratic_step("sam", {"rho": rho, "adaptive": True}, W0, A, lr), expected,
                               rtol=1e-12)  # fmt: skip


def test_gsam_subtracts_alpha_times_the_orthogonal_part_of_the_plain_gradient():
    rho, lr, alpha = 0.3, 0.1, 0.7
    g = A @ W0
    g_p = A @ (W0 + rho * g / np.linalg.norm(g))
    orthogonal = g - (g @ g_p) / (g_p @ g_p) * g_p
    expected = W0 - lr * (g_p - alpha * orthogonal)
    got = _quadratic_step("gsam", {"rho": rho, "adaptive": False, "alpha": alpha}, W0, A, lr)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert abs(orthogonal @ g_p) < 1e-9  # the oracle's decomposition is orthogonal


def test_sam_second_pass_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    head = torch.nn.Linear(4, 1)
    hooks = build_method("sam", {}).training_hooks(_context(loop="images"))
    assert hooks.wrap_backbone(backbone) == []  # adds no parameter; SAM only keeps the backbone to find BN
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.1)
    x = torch.randn(16, 3)
    optimizer.zero_grad()
    head(backbone(x)).pow(2).mean().backward()
    after_first = backbone[1].running_mean.clone()
    passes = []

    def closure():
        optimizer.zero_grad()
        loss = head(backbone(x * 3 + 1)).pow(2).mean()  # very different batch statistics
        loss.backward()
        passes.append(1)
        return loss

    hooks.step(optimizer, closure)
    assert passes == [1] and torch.equal(backbone[1].running_mean, after_first)
    assert backbone[1].momentum == 0.1  # restored


# --------------------------------------------------------------------------------------------------------- FIS


def _reference_fis(losses: torch.Tensor, group_samples: list[torch.Tensor], groups: torch.Tensor, c: float,
                   tau: float, rho: float, blur: float) -> torch.Tensor:  # fmt: skip
    """FairVision's Fair_Loss_Scaler.forward as METHODS.md §3.13 states it (weights summing to ρ)."""
    from geomloss import SamplesLoss

    sinkhorn = SamplesLoss(loss="sinkhorn", p=2, blur=blur)
    individual = torch.softmax(losses / tau, dim=0) * rho
    pooled = torch.cat(group_samples)
    distances = torch.stack([sinkhorn(s[:, None], pooled[:, None]) for s in group_samples])
    group = torch.softmax(distances[groups] / tau, dim=0) * rho
    return (((1 - c) * individual + c * group) * losses).mean()


def test_fis_matches_the_reference_formula_on_equal_group_samples():
    from geomloss import SamplesLoss

    from fairfm.mitigate.fis import fis_loss

    torch.manual_seed(1)
    losses = torch.rand(8, dtype=torch.float64) * 2
    groups = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])  # 4 + 4: the reference's equal-size group batches
    ours = fis_loss(losses, groups, coef=0.3, temperature=0.7, right_asymptote=1.5,
                    sinkhorn=SamplesLoss("sinkhorn", p=2, blur=0.1))  # fmt: skip
    reference = _reference_fis(losses, [losses[groups == 0], losses[groups == 1]], groups, 0.3, 0.7, 1.5, 0.1)
    torch.testing.assert_close(ours, reference * len(losses))  # ours: weights averaging ρ, not summing to it


def test_fis_pool_weighs_each_group_equally():
    """Unequal groups: the group-balanced pool equals the reference's pool of equal-size group samples (group A's
    two losses repeated twice against B's four)."""
    from geomloss import SamplesLoss

    from fairfm.mitigate.fis import fis_loss

    a, b = torch.tensor([0.2, 1.5], dtype=torch.float64), torch.tensor([0.1, 0.3, 0.4, 0.2], dtype=torch.float64)
    losses, groups = torch.cat([a, b]), torch.tensor([0, 0, 1, 1, 1, 1])
    sinkhorn = SamplesLoss("sinkhorn", p=2, blur=0.1)
    ours = fis_loss(losses, groups, coef=1.0, temperature=1.0, right_asymptote=1.0, sinkhorn=sinkhorn)
    pooled = torch.cat([a, a, b])[:, None]
    d = torch.stack([sinkhorn(a[:, None], pooled), sinkhorn(b[:, None], pooled)])
    weights = torch.softmax(d[groups], dim=0) * len(losses)
    torch.testing.assert_close(ours, (weights * losses).mean())


def test_fis_with_identical_groups_and_equal_losses_is_the_plain_mean():
    from geomloss import SamplesLoss

    from fairfm.mitigate.fis import fis_loss

    losses = torch.full((6,), 0.7, dtype=torch.float64, requires_grad=True)
    out = fis_loss(losses, torch.tensor([0, 1, 0, 1, 0, 1]), coef=0.5, temperature=1.0, right_asymptote=1.0,
                   sinkhorn=SamplesLoss("sinkhorn", p=2, blur=0.1))  # fmt: skip
    torch.testing.assert_close(out, losses.mean())


def test_fis_reduces_the_auc_gap_of_planted_under_representation():
    gaps = []
    for seed in range(3):
        splits = planted_features("under_representation", seed=seed)
        erm, _ = train_probe(splits, None, seed=seed, epochs=15)
        fis, _ = train_probe(splits, "fis", seed=seed, epochs=15)
        gaps.append(group_auc_gap(splits["test"], erm["test"])[2] - group_auc_gap(splits["test"], fis["test"])[2])
    gaps = np.array(gaps)
    assert gaps.mean() > 2 * gaps.std(), gaps


# ---------------------------------------------------------------------------------------------------- SWAD/SWA


def _valley_oracle(losses: list[float], nc: int, ne: int, ratio: float, base: str = "min") -> list[int] | None:
    """The epochs (1-based) SWAD averages, by its definition read offline; None: the valley is never found. The
    threshold: METHODS.md's min loss × (1 + ratio), or Cha et al.'s mean of the convergence window × (1 + ratio)."""
    n = len(losses)
    start = next((i for i in range(n - nc + 1) if losses[i] <= min(losses[i:i + nc])), None)
    if start is None:
        return None
    window = losses[start:start + nc]
    threshold = (min(window) if base == "min" else np.mean(window)) * (1 + ratio)
    joined = [start]
    for i in range(start + 1, n):
        window = losses[i:i + ne]  # a short window at the end: the reference's get_final_model
        if min(window) > threshold:
            break
        joined.append(i)
    return [i + 1 for i in joined]


def _drive(method: str, params: dict, losses: list[float], steps: int, seed: int):
    """Run a method's hooks by hand on a 2-parameter module: every step sets known weights; returns the final
    state, the per-epoch snapshots (steps × 2) and the hooks."""
    rng = np.random.default_rng(seed)
    module = torch.nn.Linear(1, 1)
    hooks = build_method(method, params).training_hooks(_context(epochs=len(losses)))
    snapshots = []
    for epoch, loss in enumerate(losses, start=1):
        epoch_weights = rng.normal(size=(steps, 2))
        for w in epoch_weights:
            with torch.no_grad():
                module.weight.fill_(w[0])
                module.bias.fill_(w[1])
            for after in hooks.after_step:
                after(module)
        snapshots.append(epoch_weights)
        info = SimpleNamespace(epoch=epoch, record={"val_loss": loss}, model=module)
        for callback in hooks.on_epoch_end:
            callback(info)
    return hooks.final_state({}, module), snapshots, hooks


@settings(max_examples=60, deadline=None)
@given(losses=st.lists(st.floats(0.1, 2.0), min_size=1, max_size=14), nc=st.integers(1, 4), ne=st.integers(1, 7),
       ratio=st.sampled_from([0.0, 0.05, 0.3]), steps=st.integers(1, 3),
       base=st.sampled_from(["min", "mean"]))  # fmt: skip
def test_swad_averages_the_iterates_of_the_validation_loss_valley(losses, nc, ne, ratio, steps, base):
    final, snapshots, hooks = _drive("swad", {"n_converge": nc, "n_tolerance": ne, "tolerance_ratio": ratio,
                                              "threshold_base": base}, losses, steps, seed=len(losses))  # fmt: skip
    epochs = _valley_oracle(losses, nc, ne, ratio, base)
    if epochs is None:  # never converged: the last epoch's iterates, as the reference
        epochs = [len(losses)]
    # the mean of each averaged epoch's dense (per-step) mean, each epoch counted once
    expected = np.mean([snapshots[e - 1].mean(axis=0) for e in epochs], axis=0)
    assert hooks.meta["averaged_epochs"] == epochs
    np.testing.assert_allclose([final["weight"].item(), final["bias"].item()], expected, rtol=1e-5, atol=1e-6)


def test_swad_valley_ends_after_n_tolerance_validations_above_the_threshold():
    losses = [1.0, 0.5, 0.6, 0.55, 0.9, 0.9, 0.9, 0.52, 0.5]  # converges at 2; epochs 5–7 leave the valley
    _, _, hooks = _drive("swad", {"n_converge": 3, "n_tolerance": 3, "tolerance_ratio": 0.05,
                                  "threshold_base": "mean"}, losses, 1, seed=0)  # fmt: skip
    assert hooks.meta["converged_epoch"] == 2 and hooks.meta["averaged_epochs"] == [2, 3, 4]
    assert hooks.meta["valley_ended"] and hooks.meta["threshold"] == pytest.approx(np.mean([0.5, 0.6, 0.55]) * 1.05)


def test_swad_defaults_follow_methods_md_min_loss_threshold_and_medfair_tolerance():
    params = build_method("swad").params
    assert params.n_tolerance == 9 and params.n_converge == 3 and params.threshold_base == "min"
    # METHODS.md §3.10: threshold = min loss × (1 + 0.05) = 0.5 × 1.05 = 0.525. Epoch 3 (0.6) has the window
    # 0.6, 0.55, 0.9 (n_tolerance 3) whose minimum 0.55 exceeds it: the valley holds epoch 2 only.
    losses = [1.0, 0.5, 0.6, 0.55, 0.9, 0.9, 0.9, 0.52, 0.5]
    _, _, hooks = _drive("swad", {"n_tolerance": 3}, losses, 1, seed=0)
    assert hooks.meta["threshold"] == pytest.approx(0.525)
    assert hooks.meta["averaged_epochs"] == [2] and hooks.meta["valley_ended"]


def test_swa_averages_the_end_of_epoch_weights_from_swa_start():
    final, snapshots, hooks = _drive("swa", {"swa_start": 3}, [1.0] * 5, 2, seed=3)
    expected = np.mean([s[-1] for s in snapshots[2:]], axis=0)
    np.testing.assert_allclose([final["weight"].item(), final["bias"].item()], expected, rtol=1e-6)
    assert hooks.meta["averaged_epochs"] == [3, 4, 5]
    from fairfm.errors import InputError

    with pytest.raises(InputError, match="method_params.swa_start: 9 is after the last epoch"):
        build_method("swa", {"swa_start": 9}).check(_context(epochs=5))


def test_swa_in_the_image_loop_re_estimates_batchnorm_for_the_averaged_weights(tmp_path):
    """The averaged conv weights are the mean of the end-of-epoch snapshots, and the BatchNorm statistics of the
    final state are those of the averaged network on the training rows (cumulative over the batches)."""
    from PIL import Image

    from fairfm.adapt.train import ImageTable, fit, make_classifier
    from fairfm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
    from fairfm.spec import TrainHParams

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"sample_id": f"s{i}", "path": f"{i}.png", "label_d": float(i % 2), "group_sex": "FM"[i % 2],
                     "split": "train" if i < 16 else "val"})  # fmt: skip
    frame = pd.DataFrame(rows)
    pre = Preprocess(8, IMAGENET_MEAN, IMAGENET_STD)
    train = ImageTable(frame[frame.split == "train"], tmp_path, pre, ["d"], group_column="group_sex")
    val = ImageTable(frame[frame.split == "val"], tmp_path, pre, ["d"], group_column="group_sex")
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(3, 2, 3), torch.nn.BatchNorm2d(2)
    backbone = torch.nn.Sequential(conv, norm, torch.nn.ReLU(), torch.nn.Flatten())
    model = make_classifier(backbone, backbone, 2 * 6 * 6, 1)
    hp = TrainHParams(epochs=3, batch_size=4, lr=0.05, optimizer="sgd", warmup_epochs=0, select_by="last")
    hooks = build_method("swa", {"swa_start": 2}).training_hooks(_context(epochs=3, loop="images"))
    snapshots = []
    result = fit(model, train, val, hparams=hp, hooks=hooks, on_epoch_end=[lambda info: snapshots.append(
        info.state()["backbone.0.weight"])])  # fmt: skip
    weight = result.best_state["backbone.0.weight"]
    torch.testing.assert_close(weight, (snapshots[1] + snapshots[2]) / 2)
    batches = [torch.stack([train[i][0] for i in range(s, s + 4)]) for s in range(0, 16, 4)]
    outputs = [torch.nn.functional.conv2d(x, weight, result.best_state["backbone.0.bias"]) for x in batches]
    mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outputs]).mean(dim=0)
    var = torch.stack([o.transpose(0, 1).reshape(2, -1).var(dim=1) for o in outputs]).mean(dim=0)
    torch.testing.assert_close(result.best_state["buffer.backbone.1.running_mean"], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.best_state["buffer.backbone.1.running_var"], var, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- FairCLIP


def test_fairclip_term_is_the_sinkhorn_distance_of_each_group_to_the_batch():
    from geomloss import SamplesLoss

    from fairfm.mitigate.base import LossInputs
    from fairfm.mitigate.fairclip import sinkhorn_term

    torch.manual_seed(0)
    similarity = torch.rand(6, 1, 2, dtype=torch.float64) * 2 - 1
    targets = torch.tensor([[0.0], [1.0], [1.0], [float("nan")], [0.0], [1.0]], dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 1, 0])
    inputs = LossInputs(similarity, targets, groups, torch.zeros(6, 0), torch.zeros(6, 1), ~targets.isnan(), 0,
                        similarity=similarity)  # fmt: skip
    sinkhorn = SamplesLoss("sinkhorn", p=2, blur=0.01)
    # by hand: each labelled sample's cosine with its true class (sample 3 has no label)
    matched = torch.stack([similarity[i, 0, int(targets[i, 0])] for i in (0, 1, 2, 4, 5)])[:, None]
    in_group = torch.tensor([0, 0, 1, 1, 0])
    expected = sinkhorn(matched, matched[in_group == 0]) + sinkhorn(matched, matched[in_group == 1])
    torch.testing.assert_close(sinkhorn_term(inputs, sinkhorn), expected)


# ---------------------------------------------------------------------------------------------- end to end (CLI)


def _run(capsys, synth_dir, clip_dir, store, usage, method, *params, epochs=4):
    hp = [f"epochs={epochs}", "batch_size=32", "warmup_epochs=0", "select_by=last"]
    args = ["run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir, "--usage", usage,
            "--method", method, "--bootstrap", "10", "--seed", "1", "--store", store, "--quiet"]  # fmt: skip
    for item in hp:
        args += ["--hp", item]
    for item in params:
        args += ["--method-param", item]
    return run_cli(capsys, *args)


def _stored(store: Path) -> tuple[dict, pd.DataFrame]:
    (run,) = [p for p in (store / "runs").iterdir() if (p / "meta.json").is_file()]
    return json.loads((run / "meta.json").read_text()), pd.read_parquet(run / "predictions.parquet")


@pytest.mark.parametrize("method,params", [("fis", ()), ("sam", ("rho=0.5",)), ("gsam", ()), ("swad", ()),
                                           ("swa", ("swa_start=2",))])  # fmt: skip
def test_methods_run_on_the_linear_probe_through_the_cli(capsys, synth_dir, clip_dir, tmp_path, method, params):
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "s1", "linear_probe", method, *params)
    assert code == 0, err
    meta, predictions = _stored(tmp_path / "s1")
    reads = "sex" if method == "fis" else None  # SAM, GSAM, SWAD, SWA read no attribute: recorded null
    assert meta["method"]["name"] == method and meta["method"]["attribute"] == reads
    assert meta["method"]["attribute_at_test"] is False and predictions["y_score"].between(0, 1).all()
    if method in ("fis", "swad"):  # same spec, same predictions (a fresh store computes it again)
        code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "s2", "linear_probe", method, *params)
        assert code == 0, err
        pd.testing.assert_frame_equal(predictions, _stored(tmp_path / "s2")[1])


@pytest.mark.parametrize("method", ["fis", "sam", "swad"])
def test_methods_run_in_the_image_loop_through_the_cli(capsys, synth_dir, clip_dir, tmp_path, method):
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "s", "bitfit", method, epochs=2)
    assert code == 0, err
    meta, predictions = _stored(tmp_path / "s")
    assert meta["method"]["name"] == method and predictions["y_score"].between(0, 1).all()
    if method == "swad":
        assert meta["method"]["details"]["granularity"] == "epoch"


def test_fairclip_runs_on_prototype_tuning_and_changes_it(capsys, synth_dir, clip_dir, tmp_path):
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "a", "prototype", "fairclip", "weight=10",
                        "blur=0.01")  # fmt: skip
    assert code == 0, err
    meta, predictions = _stored(tmp_path / "a")
    assert meta["method"]["name"] == "fairclip" and meta["method"]["params"] == {"attribute": None, "weight": 10.0,
                                                                               "blur": 0.01}  # fmt: skip
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "b", "prototype", "fairclip", "weight=0")
    assert code == 0, err
    plain = _stored(tmp_path / "b")[1]
    assert (predictions["y_score"] - plain["y_score"]).abs().max() > 1e-6  # the Sinkhorn term moves training


def test_fairclip_refuses_a_usage_without_image_text_similarity(capsys, synth_dir, clip_dir, tmp_path):
    code, out, err = _run(capsys, synth_dir, clip_dir, tmp_path / "s", "linear_probe", "fairclip")
    assert code == 2 and "fairclip" in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s" / "runs").exists()


def test_clip_head_loop_honours_a_data_method(capsys, synth_dir, clip_dir, tmp_path):
    """Group DRO on prototype tuning: its hooks run (the group weights it reached are recorded) and change the
    predictions against the same usage without a method."""
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "a", "prototype", "group_dro", "step_size=0.5")
    assert code == 0, err
    meta, predictions = _stored(tmp_path / "a")
    weights = meta["method"]["details"]["final_group_weights"]
    assert set(weights) == {"F", "M"} and sum(weights.values()) == pytest.approx(1.0)
    hp = ["--hp", "epochs=4", "--hp", "batch_size=32", "--hp", "warmup_epochs=0", "--hp", "select_by=last"]
    code, _, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir,
                           "--usage", "prototype", "--bootstrap", "10", "--seed", "1", "--store", tmp_path / "b",
                           "--quiet", *hp)  # fmt: skip
    assert code == 0, err
    plain = _stored(tmp_path / "b")[1]
    assert (predictions["y_score"] - plain["y_score"]).abs().max() > 1e-6


def test_fis_runs_on_prototype_tuning(capsys, synth_dir, clip_dir, tmp_path):
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "s", "prototype", "fis")
    assert code == 0, err
    meta, predictions = _stored(tmp_path / "s")
    assert meta["method"]["name"] == "fis" and predictions["y_score"].between(0, 1).all()


def test_swad_averages_a_clip_adapter_in_the_clip_head_loop(capsys, synth_dir, clip_dir, tmp_path):
    code, _, err = _run(capsys, synth_dir, clip_dir, tmp_path / "s", "clip_adapter", "swad", "n_converge=1",
                        "n_tolerance=1", "tolerance_ratio=10")  # fmt: skip
    assert code == 0, err
    meta, predictions = _stored(tmp_path / "s")
    assert meta["method"]["details"]["averaged_epochs"] == [1, 2, 3, 4]  # a wide valley: every epoch joins
    assert predictions["y_score"].between(0, 1).all()
