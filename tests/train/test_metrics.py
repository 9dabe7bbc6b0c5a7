"""The evaluation figures and the weighted sampler against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneage.train.augment import AugmentConfig, augment_batch, build_augmentation
from boneage.train.metrics import age_group, evaluate, regression_metrics
from boneage.train.weighting import (
    category_weights,
    distribution_table,
    draw_repeats,
    expected_repeats,
    sample_probabilities,
)


def test_regression_metrics_match_hand_computed_values():
    m = regression_metrics([10, 20, 40], [12, 20, 30])
    assert m["n"] == 3
    assert m["mae"] == pytest.approx(4.0)
    assert m["rmse"] == pytest.approx(np.sqrt((4 + 0 + 100) / 3))
    # R^2 = 1 - SS_res / SS_tot; true mean 62/3
    ss_tot = sum((t - 62 / 3) ** 2 for t in (12, 20, 30))
    assert m["r2"] == pytest.approx(1 - 104 / ss_tot)
    assert m["within_6m"] == pytest.approx(2 / 3) and m["within_12m"] == pytest.approx(1.0)
    assert m["mean_error"] == pytest.approx(8 / 3)


def test_groups_and_sexes_partition_the_images():
    true = [30, 70, 130, 200, 230]
    pred = [33, 60, 130, 190, 240]
    male = [1, 0, 1, 0, 1]
    report = evaluate(pred, true, male)
    assert [age_group(t) for t in true] == ["0-5y", "5-10y", "10-15y", "15-19y", "15-19y"]
    assert {g: r["n"] for g, r in report["by_age_group"].items()} == {"0-5y": 1, "5-10y": 1, "10-15y": 1,
                                                                      "15-19y": 2}
    assert report["by_sex"]["male"]["n"] == 3 and report["by_sex"]["female"]["n"] == 2
    assert report["by_age_group"]["15-19y"]["mae"] == pytest.approx(10.0)
    assert report["by_sex"]["female"]["mae"] == pytest.approx(10.0)
    assert regression_metrics([], [])["n"] == 0


def test_weighted_sampler_matches_its_formula():
    # categories (12-month bins): 0 -> 3 images, 1 -> 1 image, 2 -> 2 images
    ages = [5, 6, 7, 15, 25, 30]
    weights = category_weights(ages)
    # w_c = (1/n_c) / sum(1/n_k) = (1/3, 1, 1/2) / (11/6)
    assert weights == pytest.approx({0: 2 / 11, 1: 6 / 11, 2: 3 / 11})
    assert sum(weights.values()) == pytest.approx(1.0)
    # each image in proportion to its category's weight: (2, 2, 2, 6, 3, 3) / 18
    probs = sample_probabilities(ages)
    assert probs == pytest.approx([1 / 9] * 3 + [1 / 3] + [1 / 6] * 2)
    expected = expected_repeats(ages, epoch_size=66)
    assert expected.sum() == pytest.approx(66)
    assert expected[3] == pytest.approx(22)  # the lone 1-2 year image: rarer category, more samples per image
    assert expected[0] == pytest.approx(22 / 3)
    table = distribution_table(ages, epoch_size=66)  # so every category fills the same share of the epoch
    assert [(r["images"], r["samples_per_epoch"]) for r in table] == [(3, 22.0), (1, 22.0), (2, 22.0)]


def test_tempered_weights_follow_count_to_the_minus_power():
    ages = [5, 6, 7, 8, 15]  # 4 images in category 0, 1 in category 1
    # power 0.5: w proportional to (1/2, 1) -> (1/3, 2/3); per image (1/3, 1/3, 1/3, 1/3, 2/3) / 2;
    # the categories' shares go as n^(1 - 0.5): 2 to 1. power 0: no weighting, every image alike
    assert category_weights(ages, power=0.5) == pytest.approx({0: 1 / 3, 1: 2 / 3})
    assert sample_probabilities(ages, power=0.0) == pytest.approx([0.2] * 5)
    assert expected_repeats(ages, epoch_size=12, power=0.5) == pytest.approx([2, 2, 2, 2, 4])


def test_drawn_repeats_have_the_expected_mean():
    expected = np.array([0.2, 1.0, 2.7, 0.0])
    rng = np.random.default_rng(0)
    draws = np.stack([draw_repeats(expected, rng) for _ in range(4000)])
    assert draws.dtype == np.int64 and draws.min() >= 0
    assert set(np.unique(draws[:, 2])) == {2, 3} and (draws[:, 3] == 0).all()
    np.testing.assert_allclose(draws.mean(axis=0), expected, atol=0.03)


def test_augmentation_changes_each_sample_differently_and_keeps_the_range():
    torch.manual_seed(0)
    image = torch.zeros(1, 1, 96, 96)
    image[:, :, 20:76, 30:66] = 0.8
    batch = image.repeat(4, 1, 1, 1)
    out = augment_batch(batch, build_augmentation(AugmentConfig()))
    assert out.shape == batch.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out[0], out[1]) and not torch.equal(out[0], batch[0])
