"""The one normalization: training-split statistics and the Normalizer that
in-memory sources and shards both apply."""

import numpy as np
import pytest
import torch

from dist_train.data.normalization import Normalizer, normalization_stats


def test_per_channel_pools_axis_1_over_the_rest_and_flat_inputs_are_one_channel():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 3, 4, 5), dtype=np.uint8)
    stats = normalization_stats(images)
    x = images.astype(np.float64)
    assert stats["per_channel"]["mean"] == x.mean(axis=(0, 2, 3)).tolist()
    assert stats["per_channel"]["std"] == x.std(axis=(0, 2, 3)).tolist()
    assert stats["per_feature"]["mean"] == x.reshape(20, -1).mean(axis=0).tolist()
    flat = rng.normal(size=(20, 7)).astype(np.float32)
    assert normalization_stats(flat)["per_channel"] == {"mean": [float(flat.astype(np.float64).mean())],
                                                        "std": [float(flat.astype(np.float64).std())]}


@pytest.mark.parametrize("mode", ["per_channel", "per_feature"])
def test_standardizes_in_float32_and_only_centres_constant_inputs(mode):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (50, 2, 3, 3), dtype=np.uint8)
    images[:, 1] = 7  # a constant channel: std 0
    z = Normalizer(normalization_stats(images), (2, 3, 3), mode, "cpu")(torch.from_numpy(images))
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert torch.equal(z[:, 1], torch.zeros_like(z[:, 1]))  # centred, not divided by ~0
    assert z[:, 0].mean().abs().item() < 1e-5 and z[:, 0].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_none_only_converts_to_float32():
    images = torch.arange(24, dtype=torch.uint8).reshape(2, 1, 3, 4)
    z = Normalizer({}, (1, 3, 4), "none", "cpu")(images)
    assert z.dtype == torch.float32 and torch.equal(z, images.float())
    with pytest.raises(ValueError, match="'per_pixel' is not one of"):
        Normalizer({}, (1, 3, 4), "per_pixel", "cpu")


def test_auto_is_per_feature_for_flat_inputs_and_per_channel_for_images():
    from dist_train.data.normalization import resolved_mode

    assert [resolved_mode("auto", shape) for shape in ((7,), (1,), (), (3, 4, 5), (2, 9))] == \
        ["per_feature", "per_feature", "per_feature", "per_channel", "per_channel"]
    assert [resolved_mode(mode, (7,)) for mode in ("per_channel", "per_feature", "none")] == \
        ["per_channel", "per_feature", "none"]  # a named mode is itself, whatever the shape
    rng = np.random.default_rng(2)
    for inputs, meant in ((rng.normal([50, 0.01, -300], [10, 0.002, 40], (30, 3)).astype(np.float32), "per_feature"),
                          (rng.integers(0, 256, (30, 3, 4, 4), dtype=np.uint8), "per_channel")):
        stats, shape = normalization_stats(inputs), inputs.shape[1:]
        auto, named = Normalizer(stats, shape, "auto", "cpu"), Normalizer(stats, shape, meant, "cpu")
        assert auto.mode == meant  # what the start record and the bundle carry: never "auto"
        assert torch.equal(auto(torch.from_numpy(inputs)), named(torch.from_numpy(inputs)))


@pytest.mark.parametrize("source, meant", [("digits", "per_channel"), ("diabetes", "per_feature"),
                                           ("wine", "per_feature"), ("synthetic", "per_feature")])
def test_built_in_sets_under_auto_are_normalized_as_their_shape_says(source, meant):
    from dist_train.config import DataConfig
    from dist_train.data.sources import build_splits

    auto, named = build_splits(DataConfig(source=source)), build_splits(DataConfig(source=source, normalize=meant))
    assert auto.input_spec.normalize == named.input_spec.normalize == meant
    assert torch.equal(auto.train.inputs, named.train.inputs) and torch.equal(auto.test.inputs, named.test.inputs)


def test_chunked_sums_are_the_whole_splits_statistics():
    from dist_train.data.normalization import streamed_stats

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (50, 2, 3, 3), dtype=np.uint8)
    streamed = streamed_stats((images[lo:lo + 7] for lo in range(0, 50, 7)), (2, 3, 3))
    whole = normalization_stats(images)
    for mode in ("per_channel", "per_feature"):
        for what in ("mean", "std"):
            assert np.allclose(streamed[mode][what], whole[mode][what], rtol=1e-12, atol=1e-9), (mode, what)
