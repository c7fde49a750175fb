"""LAFTR, CFair, LNL, EnD and ODR (fairfm.mitigate.adversarial): their core computations against hand-computed
oracles, the gradient-reversal layer, the reference bugs not copied, seeding, and runs through ``fairfm run``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fairfm.mitigate import TrainContext, build_method, list_methods
from fairfm.mitigate.base import LossInputs
from tests.conftest import run_cli
from tests.mitigate.planted import GROUPS, planted_features, train_probe

METHODS = ["laftr", "cfair", "lnl", "end", "odr"]
SMALL = {"laftr": {"encoder_hidden": 16, "adversary_hidden": 16},
         "cfair": {"encoder_hidden": 16, "adversary_hidden": 16},
         "lnl": {"encoder_hidden": 16, "predictor_hidden": 16}, "end": {"encoder_hidden": 16},
         "odr": {"latent_dim": 8, "encoder_hidden": [16], "classifier_hidden": [16]}}  # fmt: skip


def _context(groups, labels, loop="features", seed=0, n_groups=2) -> TrainContext:
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, 1)
    return TrainContext(loop=loop, tasks=["y"], attribute="g", group_names=[f"g{i}" for i in range(n_groups)],
                        train_groups=np.asarray(groups, dtype=np.int64), train_labels=labels, seed=seed, epochs=1,
                        batch_size=4)  # fmt: skip


def _inputs(z, groups, labels, logits=None, epoch=0) -> LossInputs:
    targets = torch.as_tensor(np.asarray(labels, dtype=np.float32).reshape(-1, 1))
    logits = logits if logits is not None else torch.zeros_like(targets)
    known = ~torch.isnan(targets)
    return LossInputs(logits, targets, torch.as_tensor(groups), z, torch.zeros_like(targets), known, epoch)


def _hooks(name, params, context, width=3):
    """The method's hooks with its modules built for a head on ``width`` features (image loop: z = features)."""
    hooks = build_method(name, params).training_hooks(context)
    head = hooks.wrap_head(torch.nn.Linear(width, 1))
    return hooks, head


# ------------------------------------------------------------------------------------------- gradient reversal


def test_gradient_reversal_is_identity_forward_and_negates_and_scales_the_gradient():
    from fairfm.mitigate._layers import reverse_gradient

    x = torch.randn(4, 3, requires_grad=True)
    w = torch.randn(4, 3)
    y = reverse_gradient(x, 0.25)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    assert torch.allclose(x.grad, -0.25 * w)

    # in a min-max: the adversary after the layer descends its loss, the encoder before it ascends it (scaled)
    encoder, adversary = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    data = torch.randn(5, 3)
    plain = adversary(encoder(data)).pow(2).mean()
    plain_grads = torch.autograd.grad(plain, [*encoder.parameters(), *adversary.parameters()])
    reversed_loss = adversary(reverse_gradient(encoder(data), 2.0)).pow(2).mean()
    reversed_grads = torch.autograd.grad(reversed_loss, [*encoder.parameters(), *adversary.parameters()])
    for got, want in zip(reversed_grads[:2], plain_grads[:2]):
        assert torch.allclose(got, -2.0 * want)
    for got, want in zip(reversed_grads[2:], plain_grads[2:]):
        assert torch.allclose(got, want)


# ------------------------------------------------------------------------------------------------------ LAFTR


def test_laftr_cell_weights_are_inverse_proportions_by_hand():
    from fairfm.mitigate.adversarial import laftr_cell_weights

    groups = np.array([0, 0, 0, 1, 1])
    labels = np.array([0, 1, 1, 0, np.nan])  # cells among the labelled: (0,0) ¼, (0,1) ½, (1,0) ¼, (1,1) 0
    dp = laftr_cell_weights(groups, labels, "dp")  # P(a=0) = 3/5, P(a=1) = 2/5
    assert np.allclose(dp[0], 1 / (2 * 0.6)) and np.allclose(dp[1], 1 / (2 * 0.4))
    eqodd = laftr_cell_weights(groups, labels, "eqodd")
    assert np.allclose(eqodd[:, :2], [[1 / (3 * 0.25), 1 / (3 * 0.5)], [1 / (3 * 0.25), 0.0]])  # 3 non-empty
    assert np.allclose(eqodd[:, 2], 0.0)  # an unknown label is in no cell
    eqopp1 = laftr_cell_weights(groups, labels, "eqopp1")
    assert np.allclose(eqopp1, [[0, 1 / 0.5, 0], [0, 0, 0]])
    eqopp0 = laftr_cell_weights(groups, labels, "eqopp0")
    assert np.allclose(eqopp0, [[1 / (2 * 0.25), 0, 0], [1 / (2 * 0.25), 0, 0]])

    # the weighted mean error over a set is the mean over cells of each cell's mean error (Madras et al.)
    rng = np.random.default_rng(0)
    g, y = rng.integers(0, 2, 400), rng.integers(0, 2, 400).astype(float)
    error = rng.random(400)
    table = laftr_cell_weights(g, y, "eqodd")
    cells = [error[(g == a) & (y == c)].mean() for a in (0, 1) for c in (0, 1)]
    assert np.mean(table[g, y.astype(int)] * error) == pytest.approx(np.mean(cells))


def test_laftr_adversary_loss_on_a_tiny_batch_by_hand_and_its_min_max_gradients():
    groups, labels = [0, 0, 1, 1], [0, 1, 0, 1]
    hooks, _ = _hooks("laftr", {"adversary_hidden": 2, "fair_coeff": 3.0}, _context(groups, labels, loop="images"))
    adversary = hooks.regularizer.parts["adversary"]
    z = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5], [-1.5, 0.5, 0.0], [0.2, 0.3, 0.4]], requires_grad=True)
    loss = hooks.regularizer(_inputs(z, groups, labels))

    w1, b1 = adversary[0].weight.detach().numpy(), adversary[0].bias.detach().numpy()
    w2, b2 = adversary[2].weight.detach().numpy(), adversary[2].bias.detach().numpy()
    x = np.concatenate([z.detach().numpy(), np.array(labels, float)[:, None]], axis=1)  # eqodd: [z, y]
    guess = 1 / (1 + np.exp(-(np.maximum(x @ w1.T + b1, 0) @ w2.T + b2)[:, 0]))
    weights = 1 / (4 * 0.25)  # four equal cells
    assert float(loss.detach()) == pytest.approx(np.mean(weights * np.abs(np.array(groups) - guess)), rel=1e-5)

    # the adversary descends its error; z (the encoder) receives −fair_coeff × that gradient
    plain = (torch.tensor(weights) * (torch.tensor(groups, dtype=torch.float32)
             - torch.sigmoid(adversary(torch.cat([z, torch.tensor(labels, dtype=torch.float32)[:, None]], 1))[:, 0])
             ).abs()).mean()  # fmt: skip
    want_z, want_w = torch.autograd.grad(plain, [z, adversary[0].weight])
    got_z, got_w = torch.autograd.grad(loss, [z, adversary[0].weight])
    assert torch.allclose(got_z, -3.0 * want_z, atol=1e-6) and torch.allclose(got_w, want_w, atol=1e-6)
    assert hooks.meta["cell_weights"] == {"g0|y=0": 1.0, "g0|y=1": 1.0, "g1|y=0": 1.0, "g1|y=1": 1.0}


def test_laftr_and_cfair_refuse_an_attribute_with_more_than_two_groups():
    for name in ("laftr", "cfair"):
        why = build_method(name).refusal("features", "linear_probe", n_groups=3)
        assert why == f"method {name!r} needs a binary attribute; the attribute has 3 groups"
        assert build_method(name).refusal("features", "linear_probe", n_groups=2) is None
    assert build_method("lnl").refusal("features", "linear_probe", n_groups=3) is None


# ------------------------------------------------------------------------------------------------------ CFair


def test_cfair_balanced_error_weights_and_conditional_adversary_loss_by_hand():
    from fairfm.mitigate.adversarial import cfair_attribute_weights

    groups = np.array([0, 0, 0, 1, 0, 1, 1])
    labels = np.array([0, 0, 0, 1, 1, 1, 1])  # y=0: P(a=0)=1, P(a=1)=0; y=1: P(a=0)=¼, P(a=1)=¾
    # conditional: 1 / P(a | y), 0 for a group absent from a class
    assert np.allclose(cfair_attribute_weights(groups, labels, "conditional"), [[1.0, 0.0], [4.0, 4 / 3]])
    # reference (METHODS.md §3.5): [1/(1−P(y=1|a)), 1/P(y=1|a)], the list of attribute value a passed to the
    # adversary of class y = a; P(y=1|a=0) = 1/4, P(y=1|a=1) = 1
    assert np.allclose(cfair_attribute_weights(groups, labels), [[4 / 3, 4.0], [0.0, 1.0]])
    assert build_method("cfair").params.weighting == "reference"

    batch_groups, batch_labels = [0, 1, 0, 1, 1], [0, 0, 1, 1, float("nan")]
    train_groups, train_labels = np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 0, 1, 1, 1])
    context = _context(train_groups, train_labels, loop="images")
    hooks, _ = _hooks("cfair", {"adversary_hidden": 3, "mu": 0.5}, context)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    loss = float(hooks.regularizer(_inputs(z, batch_groups, batch_labels)).detach())
    base = [train_labels[train_groups == a].mean() for a in (0, 1)]  # P(y=1 | a) = ⅓, ⅔
    table = np.array([[1 / (1 - base[y]), 1 / base[y]] for y in (0, 1)])
    per_class = []
    for cls in (0, 1):
        rows = [i for i, y in enumerate(batch_labels) if y == cls]
        net = hooks.regularizer.parts[f"adversary_{cls}"]
        with torch.no_grad():
            log_p = torch.log_softmax(net(torch.relu(z[rows])), 1).numpy()
        w = np.array([table[cls, batch_groups[i]] for i in rows])
        nll = -np.array([log_p[k, batch_groups[i]] for k, i in enumerate(rows)])
        per_class.append((w * nll).sum() / w.sum())
    assert loss == pytest.approx(0.5 * np.mean(per_class), rel=1e-5)


# -------------------------------------------------------------------------------------------------------- LNL


def test_lnl_trains_its_bias_predictor_and_only_z_maximises_the_entropy():
    import torch.nn.functional as F

    from fairfm.mitigate._layers import negative_entropy

    groups, labels = [0, 1, 1, 0], [0, 1, 0, 1]
    hooks, _ = _hooks("lnl", {"predictor_hidden": 4, "entropy_weight": 0.3, "reversal_scale": 2.0},
                      _context(groups, labels, loop="images"))  # fmt: skip
    predictor = hooks.regularizer.parts["predictor"]
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss = hooks.regularizer(_inputs(z, groups, labels))
    a = torch.as_tensor(groups)

    def entropy():
        return negative_entropy(predictor(z)).mean()

    def bias():
        return F.cross_entropy(predictor(z), a)

    assert float(loss.detach()) == pytest.approx(float((0.3 * entropy() + bias()).detach()), rel=1e-6)
    got = torch.autograd.grad(loss, [z, *predictor.parameters()])
    want_z = torch.autograd.grad(0.3 * entropy() - 2.0 * bias(), z)[0]
    want_predictor = torch.autograd.grad(bias(), list(predictor.parameters()))  # the entropy term leaves it alone
    assert torch.allclose(got[0], want_z, atol=1e-6)
    for g, w in zip(got[1:], want_predictor):
        assert torch.allclose(g, w, atol=1e-6)

    # through the loop: MEDFAIR's predictor never moves (its optimiser holds the backbone); ours learns
    splits = planted_features("shortcut", seed=0, n_train=400, n_eval=400)
    context = TrainContext(loop="features", tasks=["y"], attribute="group", group_names=GROUPS,
                           train_groups=splits["train"].groups, train_labels=splits["train"].labels, seed=0,
                           epochs=2, batch_size=128)  # fmt: skip
    fresh = build_method("lnl", SMALL["lnl"]).training_hooks(context)
    fresh.wrap_head(torch.nn.Linear(16, 1))
    initial = [p.detach().clone() for p in fresh.regularizer.parameters()]
    _, trained = train_probe(splits, "lnl", seed=0, method_params=SMALL["lnl"], epochs=2)
    moved = [not torch.equal(p0, p1) for p0, p1 in zip(initial, trained.regularizer.parameters())]
    assert len(moved) == 4 and all(moved)


# -------------------------------------------------------------------------------------------------------- EnD


def test_end_terms_by_hand():
    from fairfm.mitigate.adversarial import end_terms

    z = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [-1.0, 0.0], [3.0, 4.0]])
    groups = torch.tensor([0, 0, 1, 1, 0])
    labels = torch.tensor([1, 0, 1, 1, 0])
    known = torch.tensor([True, True, True, True, False])
    orthogonal, parallel = end_terms(z, groups, labels, known)

    unit = z.numpy() / np.linalg.norm(z.numpy(), axis=1, keepdims=True)
    same_group, across = [], []
    for i in range(5):
        for j in range(i + 1, 5):
            cos = float(np.clip(unit[i] @ unit[j], -1, 1))
            if groups[i] == groups[j]:
                same_group.append(abs(cos))
            elif known[i] and known[j] and labels[i] == labels[j]:
                across.append((1 + cos) / 2)
    assert across and same_group
    assert float(orthogonal) == pytest.approx(np.mean(same_group), rel=1e-6)
    assert float(parallel) == pytest.approx(1 - np.mean(across), rel=1e-6)

    hooks, _ = _hooks("end", {"alpha": 0.2, "beta": 0.7}, _context([0, 1], [0, 1], loop="images"), width=2)
    loss = hooks.regularizer(_inputs(z, groups.tolist(), [1, 0, 1, 1, float("nan")]))
    assert float(loss) == pytest.approx(0.2 * np.mean(same_group) + 0.7 * (1 - np.mean(across)), rel=1e-6)


# -------------------------------------------------------------------------------------------------------- ODR


def test_odr_kl_is_analytic_and_reaches_the_encoders_and_the_priors_are_orthogonal():
    from fairfm.mitigate.adversarial import gaussian_kl, odr_coefficient, odr_prior_means

    mean = torch.tensor([[0.5, -1.0], [2.0, 0.0]], requires_grad=True)
    log_var = torch.tensor([[0.0, 1.0], [-0.5, 0.3]], requires_grad=True)
    prior = torch.tensor([1.0, 0.0])
    m, lv = mean.detach().numpy(), log_var.detach().numpy()
    by_hand = np.mean(0.5 * np.sum(np.exp(lv) + (m - prior.numpy()) ** 2 - 1 - lv, axis=1))
    value = gaussian_kl(mean, log_var, prior)
    assert float(value.detach()) == pytest.approx(by_hand, rel=1e-6)
    value.backward()
    assert mean.grad.abs().sum() > 0 and log_var.grad.abs().sum() > 0  # MEDFAIR's .sample() KL has no gradient

    target, sensitive = odr_prior_means(128)
    assert target @ sensitive == 0 and target[13] == 1 and sensitive.sum() == 127
    assert odr_coefficient(0.1, 0.1, 20, 20) == pytest.approx(0.01)

    # in the method: the target encoder's log-variance gets a gradient from the KL term alone
    groups, labels = [0, 1, 0, 1], [0, 0, 1, 1]
    params = {**SMALL["odr"], "lambda_e": 0.0}
    hooks, head = _hooks("odr", params, _context(groups, labels), width=5)
    head.train()
    features = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    logits = head(features)
    loss = hooks.regularizer(_inputs(features, groups, labels, logits=logits))
    grad = torch.autograd.grad(loss, head.encoder.log_var.weight)[0]
    assert grad.abs().sum() > 0
    head.eval()  # prediction reads the mean of z_t: no noise
    assert torch.equal(head(features), head(features))


def test_methods_import_without_torch_and_refuse_a_batch_without_a_per_sample_representation():
    import subprocess
    import sys

    code = ("import sys; from fairfm.mitigate import list_methods, build_method; "
            "assert {'laftr', 'cfair', 'lnl', 'end', 'odr'} <= set(list_methods()); build_method('odr'); "
            "print('torch' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # spec validation stays torch-free

    from fairfm.errors import InputError

    hooks, _ = _hooks("lnl", {}, _context([0, 1], [0, 1], loop="images"))
    with pytest.raises(InputError, match="^method 'lnl': no per-sample representation for this batch"):
        hooks.regularizer(_inputs(torch.zeros((2, 0)), [0, 1], [0, 1]))


# ------------------------------------------------------------------------------------------ seeds, end to end


@pytest.mark.parametrize("name", METHODS)
def test_the_same_seed_repeats_bit_for_bit_and_another_seed_differs(name):
    splits = planted_features("shortcut", seed=1, n_train=300, n_eval=200)
    first, _ = train_probe(splits, name, seed=4, method_params=SMALL[name], epochs=2)
    again, _ = train_probe(splits, name, seed=4, method_params=SMALL[name], epochs=2)
    other, _ = train_probe(splits, name, seed=5, method_params=SMALL[name], epochs=2)
    assert np.array_equal(first["test"], again["test"]) and np.array_equal(first["val"], again["val"])
    assert not np.array_equal(first["test"], other["test"])


def _run(capsys, synth_dir, clip_dir, store, usage, name, params, *extra):
    hparams = ["epochs=2", "batch_size=32", "warmup_epochs=0", "select_by=last"] if usage != "zero_shot" else []
    args = ["run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir, "--usage", usage,
            "--method", name, "--attr", "sex", "--bootstrap", "0", "--store", store, "-q"]  # fmt: skip
    for key, value in params.items():
        args += ["--method-param", f"{key}={value if not isinstance(value, list) else json.dumps(value)}"]
    for setting in hparams:
        args += ["--hp", setting]
    return run_cli(capsys, *args, *extra)


def _only_meta(store: Path) -> dict:
    metas = list((store / "runs").glob("*/meta.json"))
    assert len(metas) == 1, metas
    return json.loads(metas[0].read_text())


@pytest.mark.parametrize("name", METHODS)
def test_fairfm_run_linear_probe_records_the_method(name, synth_dir, clip_dir, tmp_path, capsys):
    assert name in list_methods()
    store = tmp_path / "store"
    code, out, err = _run(capsys, synth_dir, clip_dir, store, "linear_probe", name, SMALL[name])
    assert code == 0, err
    method = _only_meta(store)["method"]
    assert method["name"] == name and method["attribute"] == "sex" and method["attribute_at_test"] is False
    assert method["params"]["attribute"] is None and all(
        method["params"][k] == v for k, v in SMALL[name].items())  # fmt: skip
    assert "encoder" in method["details"]["representation"]


@pytest.mark.parametrize("name", METHODS)
def test_fairfm_run_bitfit_acts_on_the_backbone_features(name, synth_dir, clip_dir, tmp_path, capsys):
    store = tmp_path / "store"
    params = {k: v for k, v in SMALL[name].items() if k != "encoder_hidden"}
    code, out, err = _run(capsys, synth_dir, clip_dir, store, "bitfit", name, params)
    assert code == 0, err
    meta = _only_meta(store)
    assert meta["method"]["name"] == name and meta["method"]["attribute_at_test"] is False
    assert "backbone's pooled features" in meta["method"]["details"]["representation"]
    # LAFTR's gradient clipping (METHODS.md §3.4: 5.0) reaches the image loop; the others leave it off
    assert meta["training"]["clip_grad_norm"] == (5.0 if name == "laftr" else None)


def test_fairfm_run_refuses_a_usage_without_a_training_loop_before_any_work(synth_dir, clip_dir, tmp_path, capsys):
    store = tmp_path / "store"
    code, out, err = _run(capsys, synth_dir, clip_dir, store, "zero_shot", "laftr", {})
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "method 'laftr' does not serve usage 'zero_shot'" in lines[0]
    assert "Traceback" not in err and not list(store.rglob("runs/*/meta.json"))


# ------------------------------------------------------------------------------------- direction on planted bias


def _tpr_gap(split, probabilities: np.ndarray) -> float:
    """|TPR_A − TPR_B| at threshold 0.5 on one split."""
    predicted = probabilities[:, 0] >= 0.5
    positives = split.labels[:, 0] == 1
    return abs(predicted[positives & (split.groups == 0)].mean() - predicted[positives & (split.groups == 1)].mean())


def _group_probe_auc(splits, hooks) -> float:
    """Test AUC of a logistic regression fitted on validation to read the group from the encoder's z."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    encoder = hooks.regularizer.source.encoder
    with torch.no_grad():
        z_val, z_test = (encoder(torch.as_tensor(splits[s].features)).numpy() for s in ("val", "test"))
    probe = LogisticRegression(max_iter=2000).fit(z_val, splits["val"].groups)
    return roc_auc_score(splits["test"].groups, probe.predict_proba(z_test)[:, 1])


def test_adversarial_methods_shrink_the_shortcut_tpr_gap_against_erm_with_the_same_encoder():
    """The shortcut marker (group ↔ label in training only) makes ERM miss the minority's positives at test time.
    Against ERM with the same trainable encoder (LAFTR with fair_coeff 0: the adversary's gradient never reaches
    z), LNL (defaults), CFair (μ = 1), LAFTR (defaults) and EnD (α = β = 1) shrink the test TPR gap on every seed;
    for LNL, CFair and EnD by more than twice the spread of the improvement (LAFTR's spread is wider on other
    seeds), and LNL, CFair and EnD leave less group information in z. CFair's and EnD's defaults (0.1), and ODR, did
    not help (docs/methods.md)."""
    settings = {"baseline": ("laftr", {"fair_coeff": 0.0}), "lnl": ("lnl", {}), "cfair": ("cfair", {"mu": 1.0}),
                "laftr": ("laftr", {}), "end": ("end", {"alpha": 1.0, "beta": 1.0})}  # fmt: skip
    gaps: dict[str, list[float]] = {name: [] for name in settings}
    probes: dict[str, list[float]] = {name: [] for name in settings}
    for seed in range(3):
        splits = planted_features("shortcut", seed=seed, n_train=1000, n_eval=1000)
        for name, (method, params) in settings.items():
            predictions, hooks = train_probe(splits, method, seed=seed, method_params={**params, "encoder_hidden": 32},
                                             epochs=40, lr=0.01)  # fmt: skip
            gaps[name].append(_tpr_gap(splits["test"], predictions["test"]))
            probes[name].append(_group_probe_auc(splits, hooks))
    for name in ("lnl", "cfair", "laftr", "end"):
        gain = np.array(gaps["baseline"]) - np.array(gaps[name])
        assert (gain > 0).all(), (name, gaps)
        if name != "laftr":
            assert gain.mean() > 2 * gain.std(), (name, gaps)
            assert (np.array(probes[name]) < np.array(probes["baseline"])).all(), (name, probes)
