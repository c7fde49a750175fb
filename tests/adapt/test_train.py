"""The one training loop: determinism, learning, the trainable mask, each hook, early stopping, resuming."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm.adapt.train import (
    EpochInfo,
    ImageTable,
    fit,
    load_state,
    make_classifier,
    masked_bce,
    mean_known,
    predict,
    timm_randaugment,
)
from fairfm.errors import InputError
from fairfm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fairfm.spec import FullFinetuneHParams, TrainHParams

SIZE = 16


def _write_images(root: Path, n: int, seed: int) -> pd.DataFrame:
    """A separable problem with no brightness shortcut: class 1 is bright on the left half, class 0 on the
    right."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        y = i % 2
        image = rng.uniform(0, 90, (SIZE, SIZE))
        if y:
            image[:, : SIZE // 2] += 120
        else:
            image[:, SIZE // 2 :] += 120
        Image.fromarray(image.astype(np.uint8)).save(root / f"img{i}.png")
        rows.append(
            {
                "sample_id": f"s{i}",
                "patient_id": f"p{i}",
                "path": f"img{i}.png",
                "label_d": float(y),
                "group_sex": "F" if i % 3 else "M",
                "split": "train" if i < 32 else "val",
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    frame = _write_images(root, 48, seed=0)
    pre = Preprocess(SIZE, IMAGENET_MEAN, IMAGENET_STD)
    train = ImageTable(frame[frame.split == "train"], root, pre, ["d"], group_column="group_sex")
    val = ImageTable(frame[frame.split == "val"], root, pre, ["d"], group_column="group_sex")
    return train, val


def _model(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Conv2d(4, 2, 1),
            torch.nn.Flatten(),
        )
    return make_classifier(backbone, backbone, 2 * SIZE * SIZE, 1, seed=seed)


def _hp(**kw) -> TrainHParams:
    base = {
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "optimizer": "adamw",
        "warmup_epochs": 0,
        "weight_decay": 0.01,
        "early_stopping_patience": None,
        "select_by": "last",
    }
    return TrainHParams(**{**base, **kw})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_image_table_reads_preprocessed_images_labels_and_groups(data):
    train, _ = data
    image, target, group, row = train[1]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert target.tolist() == [1.0] and row == 1
    assert train.group_names == ["F", "M"] and group == train.group_names.index("F")
    # Oracle: the card's preprocessing applied to the PNG read independently with Pillow.
    from PIL import Image

    raw = np.asarray(Image.open(train.sources[1].path))
    assert torch.allclose(image, train.preprocess(raw))


def test_image_table_rejects_bad_labels_naming_the_row(data, tmp_path):
    train, _ = data
    frame = train.frame.copy()
    frame.loc[3, "label_d"] = 2.0
    with pytest.raises(InputError, match=r"label_d.*row 3"):
        ImageTable(frame, train.sources[0].path.parent, train.preprocess, ["d"])


def test_seeded_training_is_deterministic_on_cpu(data):
    train, val = data
    first = fit(_model(), train, val, hparams=_hp(), seed=3)
    second = fit(_model(), train, val, hparams=_hp(), seed=3)
    other = fit(_model(), train, val, hparams=_hp(), seed=4)
    assert _same(first.last_state, second.last_state)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert not _same(first.last_state, other.last_state)  # the seed matters (data order, dropout)
    assert first.settings["amp"] is False and _hp().amp  # mixed precision is asked for, but only on CUDA


def test_loss_decreases_and_val_auc_rises_on_a_separable_problem(data):
    from sklearn.metrics import roc_auc_score

    train, val = data
    model = _model()
    before = roc_auc_score(val.labels[:, 0], predict(model, val)[:, 0])
    result = fit(model, train, val, hparams=_hp(epochs=6, lr=1e-2, select_by="val_auc"), seed=0)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.history[-1]["val_auc"] > 0.95 > before
    load_state(model, result.best_state)
    # the recorded best score is the AUC of the kept state, recomputed independently with sklearn
    assert math.isclose(roc_auc_score(val.labels[:, 0], predict(model, val)[:, 0]), result.best_score)


def test_trainable_mask_freezes_everything_else_bit_for_bit(data):
    train, val = data
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(
        model, train, val, hparams=_hp(epochs=2), seed=0, trainable=["backbone.3.weight", "head.bias"]
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"backbone.3.weight", "head.bias"}
    assert result.trainable == ["backbone.3.weight", "head.bias"]
    assert set(result.best_state) == {"backbone.3.weight", "head.bias"}  # (no buffers in this model)
    with pytest.raises(InputError, match="nope"):
        fit(_model(), train, val, hparams=_hp(epochs=1), trainable=["nope"])


def test_loss_wrapper_sees_the_group_labels_of_each_batch(data):
    train, val = data
    seen_groups, seen_targets = [], []

    def wrapper(logits, targets, groups):
        seen_groups.append(groups.clone())
        seen_targets.append(targets.clone())
        return mean_known(masked_bce(logits, targets), targets)

    seen_rows = []

    class Spy(torch.utils.data.Sampler):
        def __init__(self):
            self.order = list(range(len(train)))[::-1]

        def __iter__(self):
            seen_rows.extend(self.order)
            return iter(self.order)

        def __len__(self):
            return len(self.order)

    fit(_model(), train, val, hparams=_hp(epochs=1), loss_wrapper=wrapper, sampler=Spy())
    # The sampler's order is used as given, and the wrapper got each batch's groups and targets in that order.
    assert seen_rows == list(range(len(train)))[::-1]
    assert torch.cat(seen_groups).tolist() == train.groups[seen_rows].tolist()
    assert torch.cat(seen_targets)[:, 0].tolist() == train.labels[seen_rows, 0].tolist()
    assert set(train.groups.tolist()) == {0, 1}


def test_extra_parameters_and_adversary_are_trained_and_kept(data):
    train, val = data
    per_group_bias = torch.nn.Parameter(torch.zeros(2))
    calls = []

    def wrapper(logits, targets, groups):
        return mean_known(masked_bce(logits + per_group_bias[groups][:, None], targets), targets)

    class Adversary(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.predictor = torch.nn.Linear(2 * SIZE * SIZE, 2)

        def forward(self, features, logits, targets, groups):
            calls.append((features.shape, logits.shape, groups.shape))
            return torch.nn.functional.cross_entropy(self.predictor(features), groups)

    adversary = Adversary()
    before = adversary.predictor.weight.detach().clone()
    result = fit(
        _model(),
        train,
        val,
        hparams=_hp(epochs=1),
        loss_wrapper=wrapper,
        extra_parameters=[per_group_bias],
        adversary=adversary,
    )
    assert not torch.equal(per_group_bias.detach(), torch.zeros(2))
    assert not torch.equal(adversary.predictor.weight.detach(), before)
    assert torch.equal(result.best_state["extra.0"], per_group_bias.detach())
    assert calls[0] == (torch.Size([8, 2 * SIZE * SIZE]), torch.Size([8, 1]), torch.Size([8]))
    assert len(calls) == math.ceil(len(train) / 8)


def test_on_epoch_end_callbacks_get_each_epoch_and_can_stop(data):
    train, val = data
    infos: list[EpochInfo] = []

    def stop_after_two(info: EpochInfo) -> bool:
        infos.append(info)
        return info.epoch == 2

    result = fit(_model(), train, val, hparams=_hp(epochs=5), on_epoch_end=[stop_after_two])
    assert [i.epoch for i in infos] == [1, 2] and len(result.history) == 2
    assert infos[-1].val_probabilities.shape == (len(val), 1)
    assert infos[-1].record is result.history[-1]


def test_early_stopping_honours_patience(data):
    train, val = data
    # lr 0 with no warm-up: nothing improves after epoch 1, so patience 2 stops after epoch 3
    hp = _hp(epochs=10, lr=1e-12, min_lr=0.0, select_by="val_loss", early_stopping_patience=2)
    result = fit(_model(), train, val, hparams=hp)
    assert len(result.history) == 3 and result.best_epoch == 1


def test_resuming_from_a_checkpoint_reproduces_the_uninterrupted_run(data):
    train, val = data
    hp = _hp(epochs=3, schedule_per="iteration", warmup_epochs=1, select_by="val_auc")
    full = fit(_model(), train, val, hparams=hp, seed=1)
    part = fit(_model(), train, val, hparams=hp, seed=1, on_epoch_end=[lambda info: info.epoch == 1])
    assert part.checkpoint["epoch"] == 1
    resumed = fit(_model(seed=9), train, val, hparams=hp, seed=1, resume=part.checkpoint)
    assert _same(resumed.last_state, full.last_state)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.best_epoch == full.best_epoch and _same(resumed.best_state, full.best_state)
    assert full.best_epoch == 1  # val AUC saturates at epoch 1: only a restored selection keeps that epoch


def test_initial_state_sets_the_starting_weights(data):
    """A federated client: k local epochs from given weights give the same result whatever the local init."""
    train, val = data
    start = _model(seed=5).state_dict()
    a = fit(_model(seed=1), train, val, hparams=_hp(epochs=1), seed=2, initial_state=start)
    b = fit(_model(seed=2), train, val, hparams=_hp(epochs=1), seed=2, initial_state=start)
    assert _same(a.last_state, b.last_state)
    with pytest.raises(InputError, match="not_a_param"):
        fit(_model(), train, val, hparams=_hp(epochs=1), initial_state={"not_a_param": torch.zeros(1)})


def test_layer_decay_uses_timm_groups_and_warmup_cosine_schedule(data):
    import timm

    train, val = data
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vit = timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            num_classes=0,
            img_size=SIZE,
            patch_size=8,
            depth=2,
            embed_dim=16,
            num_heads=2,
        )
    model = make_classifier(vit, vit, 16, 1)
    lrs: list[list[float]] = []
    from fairfm.adapt import train as train_module

    original = train_module._optimizer

    def spy(hp, groups, lr):
        optimizer = original(hp, groups, lr)
        step = optimizer.step

        def record(*args, **kwargs):
            lrs.append(sorted({round(g["lr"], 12) for g in optimizer.param_groups}))
            return step(*args, **kwargs)

        optimizer.step = record
        return optimizer

    train_module._optimizer = spy
    try:
        hp = FullFinetuneHParams(
            epochs=2,
            batch_size=16,
            lr=1e-3,
            lr_scaling="none",
            warmup_epochs=1,
            min_lr=0.0,
            randaugment=None,
            early_stopping_patience=None,
        )
        result = fit(model, train, val, hparams=hp, layer_decay=0.5)
    finally:
        train_module._optimizer = original
    # 2 blocks: embeddings 0.5^3, blocks 0.5^2 and 0.5, final norm and head 1 (BEiT / Medical MAE scheme)
    peak = lrs[2]
    assert peak == sorted(round(1e-3 * s, 12) for s in (0.125, 0.25, 0.5, 1.0))
    assert lrs[0] == [0.0] and lrs[1][-1] == pytest.approx(0.5e-3)  # per-iteration linear warm-up from 0
    assert lrs[3][-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half-cosine, halfway
    assert result.settings["betas"] == [0.9, 0.95] and result.settings["layer_decay"] == 0.5


def test_layer_decay_without_a_timm_backbone_is_refused(data):
    train, val = data
    with pytest.raises(InputError, match="layer_decay"):
        fit(_model(), train, val, hparams=_hp(epochs=1), layer_decay=0.5)


def test_best_state_is_saved_with_safetensors(data, tmp_path):
    from safetensors.torch import load_file

    train, val = data
    result = fit(_model(), train, val, hparams=_hp(epochs=1), seed=0)
    result.save(tmp_path / "state.safetensors")
    loaded = load_file(tmp_path / "state.safetensors")
    assert _same(loaded, result.best_state)


def test_randaugment_changes_8bit_images_and_keeps_the_type_of_others():
    augment = timm_randaugment("rand-m9-n3-mstd0.5")
    image = (np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 251).astype(np.uint8)
    outputs = [augment(image) for _ in range(5)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert any(not np.array_equal(o, image) for o in outputs)
    floats = augment(image.astype(np.float32))  # the high-bit-depth path (tests/adapt/test_finetune_families.py)
    assert floats.dtype == np.float32 and floats.shape == image.shape
    with pytest.raises(InputError, match="randaugment"):
        timm_randaugment("not-a-policy")


def test_training_without_both_classes_is_refused(data):
    train, val = data
    frame = train.frame[train.frame.label_d == 1]
    only_positive = ImageTable(frame, train.sources[0].path.parent, train.preprocess, ["d"])
    with pytest.raises(InputError, match="no negative"):
        fit(_model(), only_positive, val, hparams=_hp(epochs=1))
    with pytest.raises(InputError, match="validation split has only one class"):
        fit(_model(), train, only_positive, hparams=_hp(epochs=1, select_by="val_auc"))


def test_a_volume_is_refused_with_its_file_also_from_a_worker_process(data, tmp_path):
    train, val = data
    np.save(tmp_path / "volume.npy", np.zeros((8, SIZE, SIZE), dtype=np.uint8))
    frame = train.frame.copy()
    frame.loc[5, "path"] = "volume.npy"
    import shutil

    for source in train.sources:
        shutil.copy(source.path, tmp_path / source.path.name)
    table = ImageTable(frame, tmp_path, train.preprocess, ["d"])
    with pytest.raises(InputError, match=r"volume\.npy.*row 5.*volume"):
        table[5]
    with pytest.raises(InputError) as caught:
        fit(_model(), table, val, hparams=_hp(epochs=1, num_workers=1))
    message = str(caught.value)
    assert "\n" not in message and "volume.npy" in message and "row 5" in message


def test_a_last_batch_of_one_sample_is_dropped_so_batchnorm_trains(data):
    train, val = data
    frame = pd.concat([train.frame, val.frame.head(1)])  # 33 rows: batches of 8 leave one sample over
    table = ImageTable(frame, train.sources[0].path.parent, train.preprocess, ["d"])
    backbone = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    )
    sizes = []

    def wrapper(logits, targets, groups):
        sizes.append(len(targets))
        return mean_known(masked_bce(logits, targets), targets)

    result = fit(
        make_classifier(backbone, backbone, 4, 1), table, val, hparams=_hp(epochs=1), loss_wrapper=wrapper
    )
    assert sizes == [8, 8, 8, 8]
    assert (
        "buffer.backbone.1.running_mean" in result.best_state
    )  # BatchNorm statistics are kept with the state


def test_gradient_clipping_bounds_the_update(data):
    train, val = data
    hp = _hp(
        epochs=1, batch_size=32, lr=1.0, optimizer="sgd", momentum=0.0, weight_decay=0.0, schedule="constant"
    )

    def update_norm(clip):
        model = _model()
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        fit(model, train, val, hparams=hp, clip_grad_norm=clip)  # one SGD step: update = lr × gradient
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    assert update_norm(1e-3) == pytest.approx(1e-3, rel=1e-3)
    assert update_norm(None) > 1e-2


def test_layer_decay_groups_follow_the_beit_scheme_per_parameter():
    import timm

    from fairfm.adapt.train import _layer_decay_groups

    vit = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=SIZE, patch_size=8, depth=3,
        embed_dim=16, num_heads=2,
    )  # fmt: skip
    groups = _layer_decay_groups(vit, weight_decay=0.05, layer_decay=0.5)
    where = {id(p): g for g in groups for p in g["params"]}
    params = dict(vit.named_parameters())
    assert len(where) == len(params)  # every parameter in exactly one group
    expected = {"pos_embed": (0.5**4, 0.0), "patch_embed.proj.weight": (0.5**4, 0.05),
                "blocks.0.attn.qkv.weight": (0.5**3, 0.05), "blocks.2.mlp.fc1.bias": (0.5, 0.0),
                "norm.weight": (1.0, 0.0)}  # fmt: skip
    for name, (scale, decay) in expected.items():
        group = where[id(params[name])]
        assert (group["lr_scale"], group["weight_decay"]) == (pytest.approx(scale), decay), name
