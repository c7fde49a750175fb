"""Linear probe: cached features ≡ frozen encoder in the loop, selection on validation, weighting, schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fairfm.adapt.features import extract_features, read_array
from fairfm.adapt.linear_probe import LinearProbeResult, train_linear_probe
from fairfm.adapt.selection import lr_at, macro_auc
from fairfm.data.prepare import load_prepared
from fairfm.errors import InputError
from fairfm.spec import LinearProbeHParams


def _separable(seed: int = 0, n: int = 200, dim: int = 8):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.float64)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += 3.0 * (2 * y - 1)  # one informative direction
    return x, y


def test_cached_features_and_encoder_in_the_loop_give_identical_predictions(synth_dir, clip, tmp_path):
    table, _ = load_prepared(synth_dir)
    cache = extract_features(synth_dir, clip, out=tmp_path / "cache", progress=False, num_workers=0)
    features = np.empty((len(table), cache.features.shape[1]), dtype=np.float32)
    features[cache.index["table_row"].to_numpy()] = np.asarray(cache.features)
    # The in-loop path starts from the images themselves, decoded and preprocessed as the encoder expects.
    images = torch.stack([clip.preprocess(read_array(synth_dir / p)) for p in table["path"]])
    labels = table["label_disease"].to_numpy(dtype=np.float64)
    split = table["split"].to_numpy(dtype=str)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    hp = LinearProbeHParams(epochs=6, batch_size=16, lr=5e-2, min_lr=1e-4, warmup_epochs=1, optimizer="adamw",
                            early_stopping_patience=None)  # fmt: skip

    cached = train_linear_probe(features[tr], labels[tr], features[va], labels[va], hparams=hp, seed=3,
                                predict={"test": features[te]})  # fmt: skip
    calls = []

    def frozen_encoder(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return clip.encode_image(batch)

    in_loop = train_linear_probe(images[tr], labels[tr], images[va], labels[va], hparams=hp, seed=3,
                                 predict={"test": images[te]}, embed=frozen_encoder)  # fmt: skip

    # The encoder really ran inside the loop: every training sample, every epoch.
    assert sum(calls) >= hp.epochs * len(tr)
    assert in_loop.best_epoch == cached.best_epoch
    for name in ("val", "test"):
        assert cached.predictions[name].shape == (len(va) if name == "val" else len(te), 1)
        np.testing.assert_allclose(in_loop.predictions[name], cached.predictions[name], atol=1e-6, rtol=0)
    # …and the probe is not trivially constant: its predictions vary across samples.
    assert np.ptp(cached.predictions["test"]) > 1e-4


def test_deterministic_under_the_seed_and_seed_sensitive():
    x, y = _separable()
    hp = LinearProbeHParams(epochs=4, batch_size=32, lr=1e-2, warmup_epochs=0, early_stopping_patience=None)
    a = train_linear_probe(x[:120], y[:120], x[120:160], y[120:160], hparams=hp, seed=7, predict={"test": x[160:]})
    b = train_linear_probe(x[:120], y[:120], x[120:160], y[120:160], hparams=hp, seed=7, predict={"test": x[160:]})
    c = train_linear_probe(x[:120], y[:120], x[120:160], y[120:160], hparams=hp, seed=8, predict={"test": x[160:]})
    np.testing.assert_array_equal(a.predictions["test"], b.predictions["test"])
    assert not np.array_equal(a.predictions["test"], c.predictions["test"])


def test_learns_a_separable_problem_and_selects_the_best_validation_epoch():
    from sklearn.metrics import roc_auc_score

    x, y = _separable(1)
    hp = LinearProbeHParams(epochs=15, batch_size=32, lr=5e-2, optimizer="adamw", warmup_epochs=1,
                            early_stopping_patience=None)  # fmt: skip
    result = train_linear_probe(x[:120], y[:120], x[120:160], y[120:160], hparams=hp, seed=0,
                                predict={"test": x[160:]})  # fmt: skip
    assert roc_auc_score(y[160:], result.predictions["test"][:, 0]) > 0.95
    aucs = [h["val_auc"] for h in result.history]
    assert len(aucs) == 15
    assert result.best_epoch == int(np.argmax(aucs)) + 1  # first epoch reaching the best validation AUC
    assert result.best_score == pytest.approx(max(aucs))
    # The returned validation predictions are those of the selected head.
    assert macro_auc(y[120:160, None], result.predictions["val"]) == pytest.approx(max(aucs))


def test_early_stopping_stops_after_patience_epochs_without_gain():
    x, y = _separable(2)
    rng = np.random.default_rng(0)
    val_y = rng.permutation(y[120:160])  # validation labels unrelated to the features: no lasting gain
    hp = LinearProbeHParams(epochs=50, batch_size=32, lr=1e-2, warmup_epochs=0, early_stopping_patience=3)
    result = train_linear_probe(x[:120], y[:120], x[120:160], val_y, hparams=hp, seed=0)
    assert len(result.history) == result.best_epoch + 3 < 50


def test_class_weight_is_negatives_over_positives_on_train(monkeypatch):
    x, y = _separable(3)
    seen = {}
    original = torch.nn.BCEWithLogitsLoss.__init__

    def spy(self, *args, **kwargs):
        seen["pos_weight"] = kwargs.get("pos_weight")
        original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.BCEWithLogitsLoss, "__init__", spy)
    hp = LinearProbeHParams(epochs=1, batch_size=32, warmup_epochs=0)
    train_linear_probe(x[:100], y[:100], x[100:150], y[100:150], hparams=hp, seed=0)
    positives = y[:100].sum()
    assert float(seen["pos_weight"][0]) == pytest.approx((100 - positives) / positives)
    unweighted = hp.model_copy(update={"class_balanced": False})
    train_linear_probe(x[:100], y[:100], x[100:150], y[100:150], hparams=unweighted)
    assert float(seen["pos_weight"][0]) == 1.0


def test_unknown_labels_are_ignored_in_the_loss():
    x, y = _separable(4)
    two = np.stack([y, y], axis=1)
    two[::3, 1] = np.nan  # second task: a third of the labels unknown
    hp = LinearProbeHParams(epochs=3, batch_size=32, lr=1e-2, warmup_epochs=0, early_stopping_patience=None)
    result = train_linear_probe(x[:120], two[:120], x[120:160], two[120:160], hparams=hp, seed=0,
                                tasks=["a", "b"], predict={"test": x[160:]})  # fmt: skip
    assert result.predictions["test"].shape == (40, 2)
    assert np.isfinite(result.predictions["test"]).all()
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["val_loss"]) for h in result.history)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_a_fit_with_unknown_labels_equals_the_fit_on_the_known_rows_alone(optimizer):
    # Oracle: rows whose labels are all unknown contribute nothing — not to the loss, its normaliser, the class
    # weights, the validation AUC/loss nor the selected epoch. One full batch per epoch, so both fits take the same
    # steps; only the order of a float sum may differ.
    x, y = _separable(6)
    labels = np.stack([y, 1 - y], axis=1).astype(float)
    unknown = np.zeros(len(x), dtype=bool)
    unknown[::4] = True
    labels[unknown] = np.nan
    train, val = np.arange(120), np.arange(120, 160)
    hp = LinearProbeHParams(epochs=6, batch_size=256, lr=5e-2, warmup_epochs=1, optimizer=optimizer,
                            early_stopping_patience=None, select_by="val_loss")  # fmt: skip
    with_unknown = train_linear_probe(x[train], labels[train], x[val], labels[val], hparams=hp, seed=0,
                                      predict={"test": x[160:]})  # fmt: skip
    known_train, known_val = train[~unknown[train]], val[~unknown[val]]
    known_only = train_linear_probe(x[known_train], labels[known_train], x[known_val], labels[known_val],
                                    hparams=hp, seed=0, predict={"test": x[160:]})  # fmt: skip
    assert with_unknown.best_epoch == known_only.best_epoch
    for name in ("weight", "bias"):
        np.testing.assert_allclose(with_unknown.state_dict[name].numpy(), known_only.state_dict[name].numpy(),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(with_unknown.predictions["test"], known_only.predictions["test"], rtol=1e-5, atol=1e-6)
    for a, b in zip(with_unknown.history, known_only.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["val_auc"] == pytest.approx(b["val_auc"], rel=1e-9)


def test_schedule_warmup_then_half_cosine():
    assert lr_at(0, 10, 2, 1.0, 0.1, "cosine") == 0.0
    assert lr_at(1, 10, 2, 1.0, 0.1, "cosine") == pytest.approx(0.5)
    assert lr_at(2, 10, 2, 1.0, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_at(6, 10, 2, 1.0, 0.1, "cosine") == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(10, 10, 2, 1.0, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_at(7, 10, 2, 1.0, 0.1, "constant") == 1.0


def test_optimizer_named_in_the_hparams_is_used_without_decay_on_the_bias(monkeypatch):
    from fairfm.adapt import linear_probe

    x, y = _separable(5)
    made = []
    original = linear_probe._optimizer

    def spy(*args, **kwargs):
        optimizer = original(*args, **kwargs)
        made.append(optimizer)
        return optimizer

    monkeypatch.setattr(linear_probe, "_optimizer", spy)
    for name in ("sgd", "adamw", "adam"):
        hp = LinearProbeHParams(epochs=1, batch_size=64, warmup_epochs=0, optimizer=name, weight_decay=0.3)
        train_linear_probe(x[:100], y[:100], x[100:150], y[100:150], hparams=hp)
    assert [type(o) for o in made] == [torch.optim.SGD, torch.optim.AdamW, torch.optim.Adam]
    for optimizer in made:
        decays = {tuple(p.shape): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
        assert decays == {(1, 8): 0.3, (1,): 0.0}  # weight decayed, bias not


def test_bad_inputs_are_named():
    x, y = _separable(6)
    hp = LinearProbeHParams(epochs=1, warmup_epochs=0)
    with pytest.raises(InputError, match="no positive sample"):
        train_linear_probe(x[:50], np.zeros(50), x[50:80], y[50:80], hparams=hp, tasks=["effusion"])
    with pytest.raises(InputError, match="validation split has only one class.*select_by"):
        train_linear_probe(x[:50], y[:50], x[50:80], np.zeros(30), hparams=hp, tasks=["effusion"])
    with pytest.raises(InputError, match="row 2, task 0 has value 2.0"):
        train_linear_probe(x[:5], np.array([0, 1, 2, 0, 1]), x[5:10], y[5:10], hparams=hp)
    # val_loss selection works when validation holds a single class.
    result = train_linear_probe(x[:50], y[:50], x[50:80], np.zeros(30), hparams=hp.model_copy(
        update={"select_by": "val_loss"}))  # fmt: skip
    assert result.predictions["val"].shape == (30, 1)


def test_selected_head_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file

    x, y = _separable(7)
    hp = LinearProbeHParams(epochs=3, batch_size=32, warmup_epochs=0)
    result = train_linear_probe(x[:100], y[:100], x[100:150], y[100:150], hparams=hp, seed=0)
    assert isinstance(result, LinearProbeResult)
    result.save(tmp_path / "head.safetensors")
    loaded = load_file(tmp_path / "head.safetensors")
    assert set(loaded) == {"weight", "bias"}
    head = torch.nn.Linear(8, 1)
    head.load_state_dict(loaded)
    with torch.no_grad():
        again = torch.sigmoid(head(torch.as_tensor(x[100:150]))).double().numpy()
    np.testing.assert_allclose(again, result.predictions["val"], atol=1e-6)
