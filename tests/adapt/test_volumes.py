"""3D classification: slice bags, FairMedFM's slice max-pooling MIL, slice intensities, FairFedMed's OCT chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairfm.adapt.linear_probe import train_linear_probe
from fairfm.adapt.volumes import (
    CT_WINDOW,
    SliceBags,
    SlicePreprocess,
    chunked_classifier,
    max_over_slices,
    max_slice_probabilities,
    oct_chunk_indices,
    oct_chunk_projector,
    oct_volume_tensor,
    prepare_slice,
    resolve_intensity,
    with_slice_intensity,
)
from fairfm.errors import InputError
from fairfm.spec import LinearProbeHParams

# ------------------------------------------------------------------------------------------------ bags


def _oracle_pool(logits: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per bag and task, by explicit loops: the logit of the slice with the highest logit and its row."""
    pooled, rows, start = [], [], 0
    for size in sizes:
        block = logits[start:start + size]
        best = block.argmax(axis=0)
        pooled.append(block[best, np.arange(logits.shape[1])])
        rows.append(start + best)
        start += size
    return np.array(pooled), np.array(rows)


def test_max_over_slices_picks_the_top_slice_per_bag_and_task_for_bags_of_different_depths():
    sizes = [3, 1, 5, 2]
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(sum(sizes), 2)).astype(np.float32)
    logits[4, 0] = 9.0  # bag 2 (rows 4–8): task 0 peaks on its first slice, task 1 elsewhere
    logits[7, 1] = 8.0
    segments = np.repeat(np.arange(len(sizes)), sizes)
    tensor = torch.tensor(logits, requires_grad=True)
    pooled, selected = max_over_slices(tensor, segments, len(sizes))
    expected, rows = _oracle_pool(logits, sizes)
    np.testing.assert_array_equal(pooled.detach().numpy(), expected)
    np.testing.assert_array_equal(selected.numpy(), rows)
    assert selected[2].tolist() == [4, 7]
    # The loss reaches only the selected slice of each bag and task.
    pooled.sum().backward()
    grad = tensor.grad.numpy()
    mask = np.zeros_like(grad)
    mask[rows, np.arange(2)[None, :]] = 1.0
    np.testing.assert_array_equal(grad, mask)


def test_max_over_slices_with_two_class_logits_selects_by_class_one_probability():
    # Slice 0 has the larger positive logit but the larger P(class 1) is slice 1's (its negative logit is low).
    logits = torch.tensor([[[5.0, 6.0]], [[-3.0, 1.0]], [[0.0, 0.5]]])  # (3 rows, 1 task, 2 classes)
    pooled, selected = max_over_slices(logits, [0, 0, 1], 2, scores=logits[..., 1] - logits[..., 0])
    probability = torch.softmax(logits, dim=-1)[:, 0, 1]
    assert probability[1] > probability[0]
    assert selected.tolist() == [[1], [2]]
    torch.testing.assert_close(pooled, logits[[1, 2]])


def test_max_over_slices_rejects_unordered_or_empty_bags():
    with pytest.raises(ValueError, match="consecutive"):
        max_over_slices(torch.zeros(3, 1), [0, 1, 0], 2)
    with pytest.raises(ValueError, match="at least one row"):
        max_over_slices(torch.zeros(2, 1), [0, 0], 2)


def test_slice_bags_index_take_and_probabilities():
    rows = np.arange(20, dtype=np.float32).reshape(10, 2)
    table_row = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])
    bags = SliceBags.from_table_rows(rows, table_row, 4)
    assert len(bags) == 4 and bags.shape == (4, 2) and bags.sizes.tolist() == [3, 1, 2, 4]
    subset = bags[np.array([3, 1])]
    taken, segments = subset.take(np.arange(2))
    np.testing.assert_array_equal(taken, rows[[6, 7, 8, 9, 3]])
    assert segments.tolist() == [0, 0, 0, 0, 1]
    probabilities = np.array([0.1, 0.9, 0.2, 0.4, 0.3, 0.35, 0.0, 0.8, 0.7, 0.05])
    np.testing.assert_allclose(max_slice_probabilities(bags, probabilities)[:, 0], [0.9, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(max_slice_probabilities(subset, probabilities)[:, 0], [0.8, 0.4])
    tensor_bags = subset.with_rows(torch.as_tensor(rows))
    torch.testing.assert_close(tensor_bags.take([1])[0], torch.as_tensor(rows[[3]]))


def test_slice_bags_name_a_sample_without_rows():
    with pytest.raises(InputError, match="SampleTable row 1"):
        SliceBags.from_table_rows(np.zeros((3, 2)), np.array([0, 0, 2]), 3)


# ------------------------------------------------------------------------------------------------ MIL probe


def _bags_data(seed: int, n: int = 60, dim: int = 6):
    """Bags of 2–6 slices; a positive bag has one slice shifted along the first feature (the lesion)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 7, size=n)
    labels = (np.arange(n) % 2).astype(np.float64)
    rows = rng.normal(size=(int(sizes.sum()), dim)).astype(np.float32)
    starts = np.cumsum(sizes) - sizes
    for i in np.flatnonzero(labels == 1):
        rows[starts[i] + rng.integers(sizes[i]), 0] += 5.0
    return SliceBags(rows, sizes), labels


def test_linear_probe_on_bags_predicts_the_top_slice_of_each_volume_and_learns_instance_labels():
    bags, labels = _bags_data(0)
    val_bags, val_labels = _bags_data(1, n=30)
    hp = LinearProbeHParams(epochs=15, batch_size=20, lr=0.1, warmup_epochs=1, optimizer="adam",
                            early_stopping_patience=None)  # fmt: skip
    result = train_linear_probe(bags, labels, val_bags, val_labels, hparams=hp, seed=0)
    weight, bias = result.state_dict["weight"].numpy(), result.state_dict["bias"].numpy()
    row_logits = val_bags.rows @ weight.T + bias  # independent oracle of the pooled prediction
    expected = 1 / (1 + np.exp(-_oracle_pool(row_logits, val_bags.sizes.tolist())[0]))
    np.testing.assert_allclose(result.predictions["val"], expected, atol=1e-6)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(val_labels, result.predictions["val"][:, 0]) > 0.9  # the lesion slice is found


def test_bags_of_one_slice_train_exactly_like_plain_features():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float64)
    hp = LinearProbeHParams(epochs=4, batch_size=8, lr=0.05, warmup_epochs=0, early_stopping_patience=None)
    plain = train_linear_probe(x[:30], y[:30], x[30:], y[30:], hparams=hp, seed=2)
    bagged = train_linear_probe(SliceBags(x[:30], np.ones(30)), y[:30], SliceBags(x[30:], np.ones(10)), y[30:],
                                hparams=hp, seed=2)  # fmt: skip
    np.testing.assert_allclose(bagged.predictions["val"], plain.predictions["val"], atol=1e-7)


def test_mil_probe_on_cached_features_equals_the_encoder_in_the_loop(clip):
    rng = np.random.default_rng(0)
    depths = [2, 4, 3, 1, 5, 2, 3, 4, 2, 3, 5, 1, 2, 4, 3, 2]
    labels = np.array([i % 2 for i in range(len(depths))], dtype=np.float64)
    volumes = []
    for depth, label in zip(depths, labels):
        volume = rng.integers(0, 120, size=(depth, 20, 20)).astype(np.uint8)
        if label:
            volume[rng.integers(depth), 5:15, 5:15] = 255
        volumes.append(volume)
    images = torch.stack([clip.preprocess(s) for v in volumes for s in v])  # every slice, preprocessed
    cached = clip.encode_image(images).numpy()  # the feature cache: one forward pass
    sizes = np.array(depths)
    image_bags, feature_bags = SliceBags(images, sizes), SliceBags(cached, sizes)
    tr, va, te = np.arange(0, 8), np.arange(8, 12), np.arange(12, 16)
    hp = LinearProbeHParams(epochs=5, batch_size=4, lr=5e-2, min_lr=1e-4, warmup_epochs=1, optimizer="adamw",
                            early_stopping_patience=None)  # fmt: skip
    from_cache = train_linear_probe(feature_bags[tr], labels[tr], feature_bags[va], labels[va], hparams=hp, seed=1,
                                    predict={"test": feature_bags[te]})  # fmt: skip
    calls: list[int] = []

    def frozen_encoder(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return clip.encode_image(batch)

    in_loop = train_linear_probe(image_bags[tr], labels[tr], image_bags[va], labels[va], hparams=hp, seed=1,
                                 predict={"test": image_bags[te]}, embed=frozen_encoder)  # fmt: skip
    assert sum(calls) >= hp.epochs * int(sizes[tr].sum())  # every slice of every training volume, every epoch
    assert in_loop.best_epoch == from_cache.best_epoch
    for name in ("val", "test"):
        assert from_cache.predictions[name].shape == (4, 1)
        np.testing.assert_allclose(in_loop.predictions[name], from_cache.predictions[name], atol=1e-5, rtol=0)
    assert np.ptp(from_cache.predictions["test"]) > 1e-5


# ------------------------------------------------------------------------------------------------ intensities


def test_ct_window_minmax_and_unit_slices():
    hu = np.array([[-2000.0, -1250.0], [-500.0, 250.0], [1000.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(prepare_slice(hu, "ct_window"), [[0, 0], [0.5, 1], [1, 1250 / 1500]], atol=1e-7)
    np.testing.assert_allclose(prepare_slice(np.array([[10, 20], [30, 50]], np.uint8), "minmax"),
                               [[0, 0.25], [0.5, 1]])  # fmt: skip
    assert not prepare_slice(np.full((2, 2), 7.0), "minmax").any()
    raw = np.array([[1, 2]], np.uint16)
    assert prepare_slice(raw, "unit") is raw
    assert CT_WINDOW == (-1250.0, 250.0)


@pytest.mark.parametrize(("modality", "volume", "expected"), [
    ("chest CT", "max_slice", "ct_window"), ("abdominal CT", "oct_chunks", "ct_window"),
    ("brain T1 MRI", "max_slice", "minmax"), ("OCT B-scans", "max_slice", "minmax"),
    ("OCT B-scans", "oct_chunks", "unit"), (None, "max_slice", "minmax"),
])  # fmt: skip
def test_auto_intensity_follows_the_modality(modality, volume, expected):
    assert resolve_intensity("auto", modality, volume) == expected
    assert resolve_intensity("unit", modality, volume) == "unit"


def test_slice_preprocess_changes_the_cache_key_and_records_the_choice(clip):
    windowed = with_slice_intensity(clip, "ct_window")
    assert isinstance(windowed.preprocess, SlicePreprocess) and windowed.module is clip.module
    assert windowed.preprocess.key() != clip.preprocess.key()
    assert windowed.preprocess.to_dict()["slice_intensity"] == "ct_window"
    assert windowed.preprocess.size == clip.preprocess.size
    hu = np.linspace(-1500, 600, 400, dtype=np.float32).reshape(20, 20)
    torch.testing.assert_close(windowed.preprocess(hu), clip.preprocess(prepare_slice(hu, "ct_window")))
    assert with_slice_intensity(clip, "unit") is clip


# ------------------------------------------------------------------------------------------------ OCT chunks


def test_oct_chunk_indices_match_fairfedmed():
    indices = oct_chunk_indices(128)  # every 4th of 128 B-scans, chunks of 8
    assert indices.shape == (4, 8)
    np.testing.assert_array_equal(indices.reshape(-1), np.arange(0, 128, 4))
    assert indices[0].tolist() == [0, 4, 8, 12, 16, 20, 24, 28] and indices[-1, -1] == 124
    assert oct_chunk_indices(200).shape == (6, 8)  # 50 kept: 6 full chunks, the last 2 left out
    with pytest.raises(InputError, match="fewer than one chunk"):
        oct_chunk_indices(20)


def test_oct_volume_tensor_keeps_every_stride_th_slice_resized_by_the_model(clip):
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, size=(32, 12, 12)).astype(np.uint8)
    tensor = oct_volume_tensor(volume, clip.preprocess, stride=4, chunk_size=4)
    size = clip.preprocess.size
    assert tensor.shape == (8, size, size) and float(tensor.min()) >= 0 and float(tensor.max()) <= 1
    mean, std = clip.preprocess.mean[0], clip.preprocess.std[0]
    # slice 3 of the tensor is B-scan 12, divided by 255 and resized as the model resizes its 2D inputs
    torch.testing.assert_close(tensor[3], (clip.preprocess(volume[12])[0] * std + mean).clamp(0, 1), atol=1e-5,
                               rtol=0)  # fmt: skip


def test_projector_shapes_minmax_normalisation_and_gradients(clip):
    projector = oct_chunk_projector(clip.preprocess, chunk_size=8, seed=0)
    assert projector.conv.in_channels == 8 and projector.conv.out_channels == 3
    assert projector.conv.kernel_size == (5, 5) and projector.conv.padding == (2, 2)
    volumes = torch.rand(2, 32, 16, 16)
    images = projector(volumes)
    assert images.shape == (8, 3, 16, 16)  # 2 volumes × 4 chunks of 8
    mean = torch.tensor(clip.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.preprocess.std).view(1, 3, 1, 1)
    unit = images * std + mean  # undo the model's normalisation: each chunk spans exactly [0, 1]
    torch.testing.assert_close(unit.amin(dim=(1, 2, 3)), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(unit.amax(dim=(1, 2, 3)), torch.ones(8), atol=1e-5, rtol=0)
    # chunk 1 of volume 0 is B-scans 8–15 of the (already subsampled) stack
    conv = projector.conv(volumes[0:1, 8:16])
    ref = (conv - conv.min()) / (conv.max() - conv.min())
    torch.testing.assert_close(unit[1:2], ref, atol=1e-5, rtol=0)
    images.square().mean().backward()
    assert projector.conv.weight.grad is not None and projector.conv.weight.grad.abs().sum() > 0
    again = oct_chunk_projector(clip.preprocess, chunk_size=8, seed=0)
    torch.testing.assert_close(again.conv.weight, projector.conv.weight)  # seeded


def test_chunked_classifier_averages_the_chunk_logits(clip):
    from fairfm.adapt.train import make_classifier

    classifier = make_classifier(clip.module, clip.image_features, clip.embed_dim, 2, seed=0)
    projector = oct_chunk_projector(clip.preprocess, chunk_size=4, seed=1)
    model = chunked_classifier(classifier, projector).eval()
    size = clip.preprocess.size
    volumes = torch.rand(3, 8, size, size)
    with torch.no_grad():
        logits, features = model(volumes)
        chunk_logits, _ = classifier(projector(volumes))
    assert logits.shape == (3, 2) and features.shape == (3, clip.embed_dim)
    torch.testing.assert_close(logits, chunk_logits.reshape(3, 2, 2).mean(dim=1))
    names = {n for n, _ in model.named_parameters()}
    assert {"head.weight", "projector.conv.weight", "projector.conv.bias"} <= names
    assert any(n.startswith("backbone.") for n in names)


def _volume_table(tmp_path, depths, *, image_2d: bool = False):
    import pandas as pd

    rng = np.random.default_rng(0)
    paths = []
    for i, depth in enumerate(depths):
        path = tmp_path / f"v{i}.npz"
        np.savez(path, oct_bscans=rng.integers(0, 256, (depth, 10, 10)).astype(np.uint8))
        paths.append(path.name)
    if image_2d:
        np.savez(tmp_path / "flat.npz", oct_bscans=rng.integers(0, 256, (10, 10)).astype(np.uint8))
        paths.append("flat.npz")
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(len(paths))], "path": paths,
                         "label_glaucoma": [i % 2 for i in range(len(paths))]})  # fmt: skip


def test_image_table_gives_chunk_stacks_and_names_bad_volumes(tmp_path, clip):
    from fairfm.adapt.train import ImageTable

    options = {"volume": "oct_chunks", "slice_stride": 2, "chunk_size": 4, "intensity": "unit"}
    table = ImageTable(_volume_table(tmp_path, [16, 17]), tmp_path, clip.preprocess, ["glaucoma"], **options)
    stack, target, _, row = table[1]
    size = clip.preprocess.size
    assert stack.shape == (8, size, size) and float(target) == 1.0 and row == 1  # 17 → 9 kept → 2 chunks of 4
    volume = np.load(tmp_path / "v1.npz")["oct_bscans"]
    torch.testing.assert_close(stack, oct_volume_tensor(volume, clip.preprocess, stride=2, chunk_size=4))
    with pytest.raises(InputError, match=r"v1\.npz.*row 1.*12 chunked B-scans, row 0 gives 8"):
        ImageTable(_volume_table(tmp_path, [16, 24]), tmp_path, clip.preprocess, ["glaucoma"], **options)
    with pytest.raises(InputError, match=r"flat\.npz.*a 2D image"):
        ImageTable(_volume_table(tmp_path, [16], image_2d=True), tmp_path, clip.preprocess, ["glaucoma"], **options)
    plain = ImageTable(_volume_table(tmp_path, [16]), tmp_path, clip.preprocess, ["glaucoma"])
    with pytest.raises(InputError, match=r"v0\.npz \(SampleTable row 0\): a volume among 2D images"):
        plain[0]


def test_fit_trains_the_projector_and_predicts_per_volume(tmp_path, clip_dir):
    from fairfm.adapt.train import ImageTable, fit, make_classifier, predict
    from fairfm.adapt.volumes import volume_model
    from fairfm.models import create_model
    from fairfm.spec import BitFitHParams

    clip = create_model("clip", clip_dir)  # fit freezes what does not train: not the shared fixture's module

    frame = _volume_table(tmp_path, [8] * 8)
    options = {"volume": "oct_chunks", "slice_stride": 2, "chunk_size": 2, "intensity": "unit"}
    train = ImageTable(frame.iloc[:6], tmp_path, clip.preprocess, ["glaucoma"], **options)
    val = ImageTable(frame.iloc[6:], tmp_path, clip.preprocess, ["glaucoma"], **options)
    classifier = make_classifier(clip.module, clip.image_features, clip.embed_dim, 1, seed=0)
    model, names, meta = volume_model(classifier, clip.preprocess, options, seed=0)
    assert names == ["projector.conv.weight", "projector.conv.bias"] and meta["aggregation"] == "oct_chunks"
    before = model.projector.conv.weight.detach().clone()
    hp = BitFitHParams(epochs=1, batch_size=3, lr=1e-2, warmup_epochs=0, select_by="last")
    result = fit(model, train, val, hparams=hp, trainable=names + ["head.weight", "head.bias"])
    assert "projector.conv.weight" in result.best_state
    assert not torch.allclose(before, model.projector.conv.weight)
    probabilities = predict(model, val)
    with torch.no_grad():  # oracle: stacks → projector → encoder → head per chunk, mean of the chunk logits
        stacks = torch.stack([val[i][0] for i in range(len(val))])
        chunk_logits = classifier.head(clip.image_features(model.projector(stacks)).float())
        expected = torch.sigmoid(chunk_logits.reshape(len(val), 2, 1).mean(dim=1)).double().numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_max_slice_in_the_loop_trains_on_the_top_slice_and_matches_the_per_slice_oracle(tmp_path, clip_dir):
    from fairfm.adapt.train import ImageTable, fit, make_classifier, predict
    from fairfm.adapt.volumes import PackedSlices, first_row_is_volume, volume_model, volume_options
    from fairfm.models import create_model
    from fairfm.spec import BitFitHParams

    clip = create_model("clip", clip_dir)
    depths = [3, 1, 4, 2, 5, 2, 3, 2]
    frame = _volume_table(tmp_path, depths)
    hp = BitFitHParams(epochs=1, batch_size=3, lr=1e-2, warmup_epochs=0, select_by="last")
    assert first_row_is_volume(frame, tmp_path)
    options = volume_options(hp, has_volumes=True, modality="OCT B-scans")
    assert options == {"volume": "max_slice", "intensity": "minmax"}
    assert volume_options(hp, has_volumes=False) == {}
    train = ImageTable(frame.iloc[:5], tmp_path, clip.preprocess, ["glaucoma"], **options)
    val = ImageTable(frame.iloc[5:], tmp_path, clip.preprocess, ["glaucoma"], **options)
    stack = train[2][0]
    volume = np.load(tmp_path / "v2.npz")["oct_bscans"]
    assert stack.shape == (4, 3, clip.preprocess.size, clip.preprocess.size)
    torch.testing.assert_close(stack[1], clip.preprocess(prepare_slice(volume[1], "minmax")))
    batch = train.collate_fn([train[0], train[1]])
    assert isinstance(batch[0], PackedSlices) and batch[0].sizes.tolist() == [3, 1] and batch[1].shape == (2, 1)

    classifier = make_classifier(clip.module, clip.image_features, clip.embed_dim, 1, seed=0)
    model, extra, meta = volume_model(classifier, clip.preprocess, options)
    assert extra == [] and meta["aggregation"] == "max_slice"
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0].slices)))
    before = classifier.head.weight.detach().clone()
    fit(model, train, val, hparams=hp, trainable=["head.weight", "head.bias"])
    assert sum(seen[:2]) == sum(depths[:5])  # the training epoch sent every slice of every volume
    assert not torch.allclose(before, classifier.head.weight)
    probabilities = predict(model, val)
    with torch.no_grad():  # oracle: each slice alone through the classifier, then the max per volume
        expected = [max(float(torch.sigmoid(classifier(s[None])[0])) for s in val[i][0]) for i in range(len(val))]
    np.testing.assert_allclose(probabilities[:, 0], expected, atol=1e-5)
