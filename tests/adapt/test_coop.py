"""CoOp prompt learning (``coop``) on the tiny random-weight open_clip CLIP: what trains, the logits against
open_clip's own text and image encoders, FedOTP's transport plan against its constraints and the reference
iteration, runs end to end, learning and determinism."""

from __future__ import annotations

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import log_loss

from fairfm.adapt.coop import build_coop_model, transport_plans
from fairfm.adapt.peft_usages import finetune
from fairfm.adapt.train import ImageTable, predict
from fairfm.errors import InputError
from fairfm.models import create_model
from fairfm.results import Store
from fairfm.usages.coop import CoOpHParams
from tests.conftest import run_cli

FAST = {
    "epochs": 2,
    "batch_size": 32,
    "warmup_epochs": 0,
    "early_stopping_patience": None,
    "prompt_dataset": "synthetic",
}


@pytest.fixture
def encoder(clip_dir):
    return create_model("clip", clip_dir)  # fresh: the builder freezes the model in place


@pytest.fixture(scope="module")
def small_table(synth_dir):
    table = pd.read_parquet(synth_dir / "samples.parquet")
    return pd.concat([table[table.split == s].head(n) for s, n in (("train", 32), ("val", 16), ("test", 12))])


def _backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}


def test_only_the_prompts_receive_gradients_and_a_step_leaves_clip_unchanged(encoder):
    hp = CoOpHParams(n_ctx=5, num_prompts=3, local_prompts=1)
    model, names, meta = build_coop_model("coop", encoder, hp, ["disease", "effusion"], 0)
    width = encoder.module.token_embedding.weight.shape[1]
    assert names == ["prompt_learner.ctx", "prompt_learner.local_ctx"]
    assert model.prompt_learner.ctx.shape == (2, 5, width)
    assert model.prompt_learner.local_ctx.shape == (1, 5, width)
    assert meta["shared_parameters"] == ["prompt_learner.ctx"]
    assert meta["local_parameters"] == ["prompt_learner.local_ctx"]
    before = _backbone_state(model)
    prompts_before = model.prompt_learner.ctx.detach().clone()
    trainable = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    logits, features = model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (4, 2) and features.shape == (4, encoder.embed_dim)
    logits.sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(names)
    optimizer.step()
    assert not torch.equal(model.prompt_learner.ctx, prompts_before)
    after = _backbone_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _words(clip, tokenizer, words: str) -> torch.Tensor:
    ids = tokenizer([words])[0]
    count = int((ids == tokenizer.eot_token_id).nonzero()[0]) - 1
    with torch.no_grad():
        return clip.token_embedding(ids)[1 : 1 + count]


def test_task_logit_is_l_pos_minus_l_neg_of_open_clips_own_features(encoder, clip_dir):
    # Context vectors equal to the embeddings of real words make CoOp's text feature open_clip's encode_text
    # of
    # the sentence: an oracle outside fairfm's code. Two prompts (ot none): their class logits are averaged.
    hp = CoOpHParams(
        ctx_init="a photo of a", num_prompts=2, local_prompts=1, classnames=["normal", "opacity"]
    )
    model, _, meta = build_coop_model("coop", encoder, hp, ["disease"], 0)
    assert meta["n_ctx"] == 4
    clip, tokenizer = encoder.module, open_clip.get_tokenizer(f"local-dir:{clip_dir}")
    with torch.no_grad():
        model.prompt_learner.local_ctx[0] = _words(clip, tokenizer, "an image of the")
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
        image = F.normalize(clip.encode_image(images), dim=-1)
        scale = clip.logit_scale.exp()
        per_prompt = []
        for words in ("a photo of a", "an image of the"):
            text = F.normalize(clip.encode_text(tokenizer([f"{words} normal.", f"{words} opacity."])), dim=-1)
            per_prompt.append(scale * image @ text.T)
        class_logits = torch.stack(per_prompt).mean(dim=0)
        logits, features = model(images)
    assert torch.allclose(logits[:, 0], class_logits[:, 1] - class_logits[:, 0], atol=1e-4)
    assert torch.allclose(torch.sigmoid(logits[:, 0]), torch.softmax(class_logits, dim=-1)[:, 1], atol=1e-5)
    assert torch.allclose(features, image, atol=1e-6)


def test_ctx_init_with_a_different_n_ctx_and_a_tower_without_patch_tokens_are_refused(encoder, tmp_path):
    with pytest.raises(InputError, match="4 tokens, but hparams.n_ctx is 3"):
        build_coop_model("coop", encoder, CoOpHParams(ctx_init="a photo of a", n_ctx=3), ["disease"], 0)
    from fairfm.demo import DEMO_MODELS, save_tiny_clip

    config = next(c for name, _, c, _ in DEMO_MODELS if name == "clip_rn50")
    resnet = create_model("clip_rn50", save_tiny_clip(tmp_path / "rn50", config, seed=0))
    with pytest.raises(InputError, match="gives none"):
        build_coop_model("coop", resnet, CoOpHParams(ot="unbalanced", num_prompts=2), ["disease"], 0)
    model, _, _ = build_coop_model("coop", resnet, CoOpHParams(), ["disease"], 0)  # ot none: pooled features
    assert model(torch.randn(2, 3, 64, 64))[0].shape == (2, 1)


def _fedotp_iteration(kernel: np.ndarray, a: np.ndarray, b: np.ndarray, iterations: int) -> np.ndarray:
    """FedOTP's ``entropic_COT_fast`` scalings (u = min(a / Kv, 1), v = b / Kᵀu), run to convergence: the
    reference's own algorithm, written here as the oracle."""
    u, v = np.ones(len(a)), np.ones(len(b))
    for _ in range(iterations):
        u = np.minimum(a / (kernel @ v), 1.0)
        v = b / (kernel.T @ u)
    return u[:, None] * kernel * v[None, :]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transport_plan_meets_the_unbalanced_constraints_and_equals_fedotps_plan(seed):
    rng = np.random.default_rng(seed)
    patches, prompts, top, eps = 16, 2, 0.8, 0.1
    similarity = rng.uniform(-0.3, 0.7, size=(3, patches, prompts))
    plans = transport_plans(similarity, top_percent=top, eps=eps, max_iter=20000, thresh=1e-13)
    for plan, sim in zip(plans, similarity):
        assert (plan >= 0).all()
        assert plan.sum() == pytest.approx(top, abs=1e-9)  # total mass
        np.testing.assert_allclose(plan.sum(axis=0), top / prompts, atol=1e-7)  # prompt marginals: equalities
        assert (plan.sum(axis=1) <= 1.0 / patches + 1e-7).all()  # patch marginals: at most 1/M
        assert (plan.sum(axis=1) < 1.0 / patches - 1e-3).any()  # ... and some patches carry less (unbalanced)
        reference = _fedotp_iteration(
            np.exp(-(1.0 - sim) / eps), np.full(patches, 1 / patches), np.full(prompts, top / prompts), 20000
        )
        np.testing.assert_allclose(plan, reference, atol=1e-7)
    # FedOTP's settings (100 iterations, threshold 1e-3): the mass is exact, the marginals within POT's
    # tolerance
    rough = transport_plans(similarity, top_percent=top, eps=eps, max_iter=100, thresh=1e-3)
    np.testing.assert_allclose(rough.sum(axis=(1, 2)), top, atol=1e-9)
    np.testing.assert_allclose(rough.sum(axis=1), top / prompts, atol=2e-2)
    assert (rough.sum(axis=2) <= 1.0 / patches * 1.05).all()


def _probabilities(table, synth_dir, clip_dir, seed, **hparams):
    hp = CoOpHParams(**{**FAST, **hparams})
    out = finetune(
        "coop",
        hp,
        create_model("clip", clip_dir),
        table,
        ["disease"],
        root=synth_dir,
        seed=seed,
        build_model=build_coop_model,
    )
    return out


def test_training_is_deterministic_under_the_seed(small_table, synth_dir, clip_dir):
    settings = {"num_prompts": 2, "local_prompts": 1, "ot": "unbalanced", "epochs": 1}
    first = _probabilities(small_table, synth_dir, clip_dir, 3, **settings)
    second = _probabilities(small_table, synth_dir, clip_dir, 3, **settings)
    other = _probabilities(small_table, synth_dir, clip_dir, 4, **settings)
    for split in ("val", "test"):
        np.testing.assert_array_equal(first.probabilities[split], second.probabilities[split])
    assert not np.array_equal(first.probabilities["test"], other.probabilities["test"])
    assert first.meta["trainable_parameters"] == 2 * 4 * 64  # two prompts × 4 tokens × text width


def test_prompt_learning_lowers_the_training_loss(synth_dir, clip_dir):
    # Random weights: validation AUC on ~20 samples is noise, so the test is the loss CoOp minimises
    # (class-weighted BCE on the training rows, from sklearn), before and after training.
    table = pd.read_parquet(synth_dir / "samples.parquet")
    train = table[table.split == "train"]
    y = train["label_disease"].to_numpy()
    weights = np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
    hp = CoOpHParams(**{**FAST, "epochs": 6, "optimizer": "adamw", "lr": 1e-2, "select_by": "last"})
    encoder = create_model("clip", clip_dir)
    untrained, _, _ = build_coop_model("coop", encoder, hp, ["disease"], 0)
    start = predict(untrained, ImageTable(train, synth_dir, encoder.preprocess, ["disease"]))[:, 0]
    out = finetune(
        "coop",
        hp,
        create_model("clip", clip_dir),
        table,
        ["disease"],
        root=synth_dir,
        seed=0,
        build_model=build_coop_model,
        predict_splits=("train", "val", "test"),
    )
    end = out.probabilities["train"][:, 0]
    assert log_loss(y, end, sample_weight=weights) < log_loss(y, start, sample_weight=weights) - 0.02


@pytest.mark.parametrize("flags", [(), ("ot=unbalanced", "num_prompts=2", "local_prompts=1")])
def test_fairfm_run_coop_stores_a_run(capsys, synth_dir, clip_dir, tmp_path, flags):
    hp = [item for h in ("epochs=1", "batch_size=32", "warmup_epochs=0", *flags) for item in ("--hp", h)]
    code, _, err = run_cli(
        capsys,
        "run",
        "--dataset",
        synth_dir,
        "--model",
        "clip",
        "--checkpoint",
        clip_dir,
        "--usage",
        "coop",
        "--bootstrap",
        0,
        "--store",
        tmp_path / "s",
        "-q",
        *hp,
    )
    assert code == 0, err
    record = Store(tmp_path / "s").list()[0]
    meta = record.meta
    assert meta["classnames"] == {"disease": {"negative": "normal lungs", "positive": "lung opacity"}}
    assert meta["ot"] == ("unbalanced" if flags else "none")
    assert meta["trainable_parameters"] == (2 if flags else 1) * 4 * 64
    table = pd.read_parquet(synth_dir / "samples.parquet")
    predictions = record.predictions
    assert len(predictions) == int(table.split.isin(["val", "test"]).sum())
    assert predictions["y_score"].between(0, 1).all()


def test_a_method_wrapping_the_linear_head_is_refused(capsys, synth_dir, clip_dir, tmp_path):
    code, _, err = run_cli(
        capsys,
        "run",
        "--dataset",
        synth_dir,
        "--model",
        "clip",
        "--checkpoint",
        clip_dir,
        "--usage",
        "coop",
        "--method",
        "fin",
        "--attr",
        "sex",
        "--hp",
        "epochs=1",
        "--bootstrap",
        0,
        "--store",
        tmp_path / "s",
        "-q",
    )
    assert code == 2
    assert "linear head" in err and len(err.strip().splitlines()) == 1
