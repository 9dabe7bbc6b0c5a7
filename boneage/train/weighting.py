"""The seed's weighted augmentation: bone-age categories weighted inversely to their frequency.

Each category c (``bin_months`` wide) with n_c images gets the weight w_c = (1/n_c) / sum_k (1/n_k),
so the weights sum to 1, and, as in the seed, each image gets a number of (augmented) samples in
proportion to its category's weight: image i is drawn with probability w_c(i) / sum_j w_c(j). Every
category then fills the same share of an epoch, and the images of a rare category come back more
often, each time with a different random augmentation.

``power`` tempers the rule: w_c proportional to n_c^-power, so a category's share of an epoch is
proportional to n_c^(1 - power). 1 is the seed's rule (equal shares), 0 no weighting. On a few
hundred images a category of two images would otherwise fill as much of an epoch as one of twenty,
each of its two images repeated ten times as often.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def categories(ages_months: Sequence[float], bin_months: int = 12) -> np.ndarray:
    """Category index per image: bone age // ``bin_months``."""
    return (np.asarray(ages_months, dtype=np.float64) // bin_months).astype(np.int64)


def category_weights(ages_months: Sequence[float], bin_months: int = 12, power: float = 1.0) -> dict[int, float]:
    """{category: weight}, weights inversely proportional to the category's count (to ``power``), summing to 1."""
    cats, counts = np.unique(categories(ages_months, bin_months), return_counts=True)
    inverse = counts.astype(np.float64) ** -power
    return {int(c): float(w) for c, w in zip(cats, inverse / inverse.sum(), strict=True)}


def sample_probabilities(ages_months: Sequence[float], bin_months: int = 12, power: float = 1.0) -> np.ndarray:
    """Probability of drawing each image: proportional to its category's weight (sums to 1)."""
    cats = categories(ages_months, bin_months)
    weights = category_weights(ages_months, bin_months, power)
    per_image = np.array([weights[c] for c in cats])
    return per_image / per_image.sum()


def expected_repeats(ages_months: Sequence[float], epoch_size: int | None = None, bin_months: int = 12,
                     power: float = 1.0) -> np.ndarray:
    """How many (augmented) samples of each image an epoch holds on average; sums to ``epoch_size``
    (default: the number of images, so an epoch costs the same as an unweighted one)."""
    n = len(ages_months) if epoch_size is None else epoch_size
    return sample_probabilities(ages_months, bin_months, power) * n


def draw_repeats(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer repeats with the given expectation: floor plus one more with the fractional part's chance."""
    base = np.floor(expected)
    return (base + (rng.random(len(expected)) < expected - base)).astype(np.int64)


def distribution_table(ages_months: Sequence[float], epoch_size: int | None = None,
                       bin_months: int = 12, power: float = 1.0) -> list[dict]:
    """Per category: images, weight, and expected samples per epoch; for the training log."""
    cats = categories(ages_months, bin_months)
    weights = category_weights(ages_months, bin_months, power)
    expected = expected_repeats(ages_months, epoch_size, bin_months, power)
    return [{"category": f"{c * bin_months}-{(c + 1) * bin_months} m", "images": int((cats == c).sum()),
             "weight": round(w, 4), "samples_per_epoch": round(float(expected[cats == c].sum()), 1)}
            for c, w in sorted(weights.items())]
