"""CLIP adaptation on cached features: prototype tuning and CLIP-Adapter against the zero-shot oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fairfm.adapt.linear_probe as linear_probe
from fairfm.adapt.clip_adaptation import clip_adapter, prototype_tuning, task_class_embeddings
from fairfm.adapt.features import extract_features
from fairfm.adapt.selection import macro_auc
from fairfm.adapt.prompts import PromptSet, prompts_for
from fairfm.adapt.zero_shot import zero_shot
from fairfm.data.prepare import load_prepared
from fairfm.errors import InputError
from fairfm.spec import ClipAdapterHParams, PrototypeHParams

PROMPTS = PromptSet(("a chest X-ray showing {}.", "a chest radiograph with {}."),
                    classnames={"disease": ("normal lungs", "lung opacity")})  # fmt: skip
TASKS = ["disease"]


def _problem(dim: int, *, seed: int = 0, n: int = 240):
    """Separable features: noise plus ±3 along one random direction; splits of 120 / 60 / 60."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)
    y = (rng.random(n) < 0.4).astype(np.float64)
    x = (rng.normal(size=(n, dim)) * 0.5 + 3.0 * (2 * y - 1)[:, None] * direction).astype(np.float32)
    features = {"train": x[:120], "val": x[120:180], "test": x[180:]}
    labels = {"train": y[:120], "val": y[120:180], "test": y[180:]}
    return features, labels


def _frozen_lr(hp_cls, **kw):
    # One epoch entirely inside a warm-up of one epoch: lr is 0, so no step changes anything (zero training).
    return hp_cls(epochs=1, warmup_epochs=1, early_stopping_patience=None, **kw)


def _zero_shot_probabilities(clip, features):
    return {s: zero_shot(clip, x, TASKS, PROMPTS).probabilities for s, x in features.items()}


def test_shapes_and_probabilities_on_cached_features(synth_dir, clip, tmp_path):
    table, _ = load_prepared(synth_dir)
    cache = extract_features(synth_dir, clip, out=tmp_path / "cache", progress=False, num_workers=0)
    x = np.empty((len(table), cache.features.shape[1]), dtype=np.float32)
    x[cache.index["table_row"].to_numpy()] = np.asarray(cache.features)
    split = table["split"].to_numpy(dtype=str)
    y = table["label_disease"].to_numpy(dtype=np.float64)
    # Two tasks, one with unknown labels: NaN rows are skipped by the loss, not treated as negatives.
    y2 = np.where(np.arange(len(y)) % 5 == 0, np.nan, 1.0 - y)
    tasks = ["disease", "normal"]
    names = {"disease": ("normal lungs", "lung opacity"), "normal": ("lung opacity", "normal lungs")}
    prompts = PromptSet(PROMPTS.templates, classnames=names)
    features = {s: x[split == s] for s in ("train", "val", "test")}
    labels = {s: np.stack([y, y2], axis=1)[split == s] for s in ("train", "val")}
    for fn, hp in ((prototype_tuning, PrototypeHParams(epochs=3, batch_size=16)),
                   (clip_adapter, ClipAdapterHParams(epochs=3, batch_size=16, text_adapter=True))):
        result = fn(features, labels, clip, tasks, prompts, hparams=hp, seed=0)
        for s in ("train", "val", "test"):
            p = result.probabilities[s]
            assert p.shape == (int((split == s).sum()), 2)
            assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
        assert result.meta["prompts"]["normal"]["positive"] == ["a chest X-ray showing normal lungs.",
                                                                 "a chest radiograph with normal lungs."]
        assert result.meta["logit_scale"] == clip.logit_scale
        assert 1 <= result.best_epoch <= 3 and len(result.history) == 3


def test_prototype_tuning_at_initialisation_is_zero_shot(clip):
    features, labels = _problem(clip.embed_dim)
    result = prototype_tuning(features, labels, clip, TASKS, PROMPTS, hparams=_frozen_lr(PrototypeHParams))
    oracle = _zero_shot_probabilities(clip, features)
    for s in features:
        np.testing.assert_allclose(result.probabilities[s], oracle[s], rtol=0, atol=1e-12)
    # The prototypes are the ensembled prompt embeddings, untouched.
    text, _ = task_class_embeddings(clip, TASKS, PROMPTS)
    torch.testing.assert_close(result.state_dict["prototypes"], text, rtol=0, atol=0)


def test_ensemble_switch_uses_the_first_template_alone(clip):
    # ensemble: false is FairMedFM's single prompt: prototypes initialised from it equal zero-shot with it alone.
    features, labels = _problem(clip.embed_dim)
    single = prototype_tuning(features, labels, clip, TASKS, PROMPTS,
                              hparams=_frozen_lr(PrototypeHParams, ensemble=False))  # fmt: skip
    ensembled = prototype_tuning(features, labels, clip, TASKS, PROMPTS, hparams=_frozen_lr(PrototypeHParams))
    oracle = zero_shot(clip, features["val"], TASKS, PROMPTS, ensemble=False).probabilities
    np.testing.assert_allclose(single.probabilities["val"], oracle, rtol=0, atol=1e-12)
    assert np.abs(single.probabilities["val"] - ensembled.probabilities["val"]).max() > 1e-6
    assert single.meta["prompts"]["disease"]["positive"] == ["a chest X-ray showing lung opacity."]
    adapter = clip_adapter(features, labels, clip, TASKS, PROMPTS,
                           hparams=_frozen_lr(ClipAdapterHParams, ensemble=False))  # fmt: skip
    assert adapter.meta["prompts"]["disease"]["negative"] == ["a chest X-ray showing normal lungs."]


def test_clip_adapter_with_ratio_zero_is_zero_shot_even_after_training(clip):
    features, labels = _problem(clip.embed_dim)
    oracle = _zero_shot_probabilities(clip, features)
    hp = ClipAdapterHParams(epochs=3, batch_size=32, lr=0.1, early_stopping_patience=None)
    # r = 0 is outside the spec's range (the adapter would be inert), so it is set past validation here.
    inert_hp = hp.model_copy(update={"residual_ratio": 0.0})
    inert = clip_adapter(features, labels, clip, TASKS, PROMPTS, hparams=inert_hp)
    for s in features:
        np.testing.assert_allclose(inert.probabilities[s], oracle[s], rtol=0, atol=1e-12)
    # With the default r = 0.2 the adapter does change the prediction, already at initialisation.
    live = clip_adapter(features, labels, clip, TASKS, PROMPTS, hparams=_frozen_lr(ClipAdapterHParams))
    assert np.abs(live.probabilities["val"] - oracle["val"]).max() > 1e-4


@pytest.mark.parametrize("usage", ["prototype", "clip_adapter"])
def test_training_improves_validation_auc_on_a_separable_problem(clip, usage):
    features, labels = _problem(clip.embed_dim, seed=1)
    zero_shot_auc = macro_auc(labels["val"][:, None], _zero_shot_probabilities(clip, features)["val"])
    if usage == "prototype":
        hp = PrototypeHParams(epochs=15, batch_size=32, warmup_epochs=2)
        result = prototype_tuning(features, labels, clip, TASKS, PROMPTS, hparams=hp)
    else:
        result = clip_adapter(features, labels, clip, TASKS, PROMPTS,
                              hparams=ClipAdapterHParams(epochs=15, batch_size=32, lr=0.05, warmup_epochs=2,
                                                         optimizer="adamw", min_lr=1e-4))  # fmt: skip
    trained_auc = macro_auc(labels["val"][:, None], result.probabilities["val"])
    test_auc = macro_auc(labels["test"][:, None], result.probabilities["test"])
    assert trained_auc > 0.95 and test_auc > 0.9
    assert trained_auc > zero_shot_auc + 0.1
    assert result.best_score == pytest.approx(trained_auc)


@pytest.mark.parametrize("usage", ["prototype", "clip_adapter"])
def test_deterministic_under_a_seed(clip, usage):
    features, labels = _problem(clip.embed_dim, seed=2)
    fn, hp = ((prototype_tuning, PrototypeHParams(epochs=4, batch_size=16, warmup_epochs=1))
              if usage == "prototype" else (clip_adapter, ClipAdapterHParams(epochs=4, batch_size=16, lr=0.05,
                                                                               warmup_epochs=1)))  # fmt: skip
    torch.manual_seed(123)
    first = fn(features, labels, clip, TASKS, PROMPTS, hparams=hp, seed=7)
    torch.manual_seed(456)  # the global RNG must not matter
    again = fn(features, labels, clip, TASKS, PROMPTS, hparams=hp, seed=7)
    other = fn(features, labels, clip, TASKS, PROMPTS, hparams=hp, seed=8)
    for s in features:
        np.testing.assert_array_equal(first.probabilities[s], again.probabilities[s])
    assert first.history == again.history
    assert not np.array_equal(first.probabilities["val"], other.probabilities["val"])


@pytest.mark.parametrize("usage", ["prototype", "clip_adapter", "clip_adapter_text"])
def test_only_the_intended_parameters_are_optimised_and_change(clip, usage, monkeypatch):
    features, labels = _problem(clip.embed_dim, seed=3)
    encoder_before = {k: v.detach().clone() for k, v in clip.module.state_dict().items()}
    text_before, _ = task_class_embeddings(clip, TASKS, PROMPTS)
    optimised: list[torch.Tensor] = []
    real_optimizer = linear_probe._optimizer  # the shared head-training loop builds the optimiser

    def spy(name, groups, hp, lr):
        optimised.extend(p for group in groups for p in group["params"])
        return real_optimizer(name, groups, hp, lr)

    monkeypatch.setattr(linear_probe, "_optimizer", spy)
    if usage == "prototype":
        result = prototype_tuning(features, labels, clip, TASKS, PROMPTS,
                                  hparams=PrototypeHParams(epochs=3, batch_size=32, warmup_epochs=0,
                                                           early_stopping_patience=None, select_by="last"))
        expected = {"prototypes": (1, 2, clip.embed_dim)}
    else:
        hidden = clip.embed_dim // 4
        hp = ClipAdapterHParams(epochs=3, batch_size=32, warmup_epochs=0, lr=0.05, select_by="last",
                                early_stopping_patience=None, text_adapter=usage == "clip_adapter_text")
        result = clip_adapter(features, labels, clip, TASKS, PROMPTS, hparams=hp)
        sides = ["image_adapter"] + (["text_adapter"] if hp.text_adapter else [])
        expected = {}
        for side in sides:
            expected[f"{side}.fc.0.weight"] = (hidden, clip.embed_dim)
            expected[f"{side}.fc.2.weight"] = (clip.embed_dim, hidden)
    # The optimiser saw exactly the trained parameters, none of the encoder's.
    assert sorted(tuple(p.shape) for p in optimised) == sorted(expected.values())
    encoder_ids = {id(p) for p in clip.module.parameters()}
    assert not encoder_ids & {id(p) for p in optimised}
    assert {k: tuple(v.shape) for k, v in result.state_dict.items()} == expected
    # The trained parameters moved; both towers of the encoder are bit-for-bit untouched.
    if usage == "prototype":
        assert not torch.allclose(result.state_dict["prototypes"], text_before)
    else:
        assert result.meta["training"]["history"][-1]["loss"] != result.meta["training"]["history"][0]["loss"]
    for k, v in clip.module.state_dict().items():
        torch.testing.assert_close(v, encoder_before[k], rtol=0, atol=0)
    text_after, _ = task_class_embeddings(clip, TASKS, PROMPTS)
    torch.testing.assert_close(text_after, text_before, rtol=0, atol=0)


def test_saved_state_round_trips(clip, tmp_path):
    from safetensors.torch import load_file

    features, labels = _problem(clip.embed_dim)
    hp = ClipAdapterHParams(epochs=2, batch_size=64)
    result = clip_adapter(features, labels, clip, TASKS, PROMPTS, hparams=hp)
    result.save(tmp_path / "adapter.safetensors")
    loaded = load_file(tmp_path / "adapter.safetensors")
    assert set(loaded) == set(result.state_dict)
    for k, v in loaded.items():
        torch.testing.assert_close(v, result.state_dict[k], rtol=0, atol=0)


def test_bad_inputs_are_named(clip):
    features, labels = _problem(clip.embed_dim)
    hp = PrototypeHParams(epochs=1)
    with pytest.raises(InputError, match="'val' split is missing"):
        prototype_tuning({"train": features["train"]}, labels, clip, TASKS, PROMPTS, hparams=hp)
    with pytest.raises(InputError, match=r"test features have shape \(60, 5\)"):
        narrow = {**features, "test": features["test"][:, :5]}
        prototype_tuning(narrow, labels, clip, TASKS, PROMPTS, hparams=hp)
    with pytest.raises(InputError, match="no positive sample"):
        prototype_tuning(features, {**labels, "train": np.zeros(120)}, clip, TASKS, PROMPTS, hparams=hp)
    with pytest.raises(InputError, match="row 3, task 0 has value 2.0"):
        bad = labels["train"].copy()
        bad[3] = 2
        adapter_hp = ClipAdapterHParams(epochs=1)
        clip_adapter(features, {**labels, "train": bad}, clip, TASKS, PROMPTS, hparams=adapter_hp)
    with pytest.raises(InputError, match="60 val feature rows for 59 labels"):
        prototype_tuning(features, {**labels, "val": labels["val"][:59]}, clip, TASKS, PROMPTS, hparams=hp)


def test_dataset_prompts_work_without_overrides(clip):
    # The registered 'synthetic' prompt set is the one the runner passes for fairfm's planted-bias data.
    features, labels = _problem(clip.embed_dim)
    result = prototype_tuning(features, labels, clip, TASKS, prompts_for("synthetic"),
                              hparams=_frozen_lr(PrototypeHParams))  # fmt: skip
    expected = zero_shot(clip, features["val"], TASKS, prompts_for("synthetic")).probabilities
    np.testing.assert_allclose(result.probabilities["val"], expected, rtol=0, atol=1e-12)


def test_multi_token_images_match_zero_shot_at_initialisation(clip):
    # A BLIP-2-like encoder: each image is several query embeddings, flattened in the cached features.
    import copy

    multi = copy.copy(clip)
    multi.image_tokens = 3
    features, labels = _problem(3 * clip.embed_dim, seed=4)
    oracle = {s: zero_shot(multi, x, TASKS, PROMPTS).probabilities for s, x in features.items()}
    proto = prototype_tuning(features, labels, multi, TASKS, PROMPTS, hparams=_frozen_lr(PrototypeHParams))
    hp = ClipAdapterHParams(epochs=2, batch_size=32, lr=0.1).model_copy(update={"residual_ratio": 0.0})
    inert = clip_adapter(features, labels, multi, TASKS, PROMPTS, hparams=hp)
    for s in features:
        np.testing.assert_allclose(proto.probabilities[s], oracle[s], rtol=0, atol=1e-12)
        np.testing.assert_allclose(inert.probabilities[s], oracle[s], rtol=0, atol=1e-12)
    # The adapter works per token (D → D/4 → D), not on the flattened 3·D vector.
    live = clip_adapter(features, labels, multi, TASKS, PROMPTS, hparams=ClipAdapterHParams(epochs=1))
    assert live.state_dict["image_adapter.fc.0.weight"].shape == (clip.embed_dim // 4, clip.embed_dim)
    with pytest.raises(InputError, match=rf"expected \(N, {3 * clip.embed_dim}\)"):
        prototype_tuning({**features, "val": features["val"][:, :clip.embed_dim]}, labels, multi, TASKS, PROMPTS,
                         hparams=_frozen_lr(PrototypeHParams))  # fmt: skip


def test_class_weights_balance_the_two_classes(clip, monkeypatch):
    # With class_balanced, each task's CE weights are N / (2·N_c) for [negative, positive] on the training split.
    import torch.nn.functional as F

    features, labels = _problem(clip.embed_dim, seed=5)
    seen: list[torch.Tensor] = []
    real = F.cross_entropy

    def spy(*args, weight=None, **kwargs):
        seen.append(weight.clone())
        return real(*args, weight=weight, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    prototype_tuning(features, labels, clip, TASKS, PROMPTS, hparams=_frozen_lr(PrototypeHParams))
    n_pos = labels["train"].sum()
    n = len(labels["train"])
    expected = torch.tensor([n / (2 * (n - n_pos)), n / (2 * n_pos)], dtype=torch.float32)
    assert seen and all(torch.allclose(w, expected) for w in seen)
    seen.clear()
    prototype_tuning(features, labels, clip, TASKS, PROMPTS,
                     hparams=_frozen_lr(PrototypeHParams, class_balanced=False))  # fmt: skip
    assert seen and all(torch.equal(w, torch.ones(2)) for w in seen)
