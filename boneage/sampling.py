"""The seed's weighted augmentation: bone-age categories weighted inversely to their frequency.

Each category c (``bin_months`` wide) with n_c images gets the weight w_c = (1/n_c) / sum_k (1/n_k),
so the weights sum to 1. An epoch draws ``epoch_size`` samples, image i with probability
w_c(i) / n_c(i): every category then fills the same share of the epoch, and the images of a rare
category appear proportionally more often, each time with a different random augmentation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def categories(ages_months: Sequence[float], bin_months: int = 12) -> np.ndarray:
    """Category index per image: bone age // ``bin_months``."""
    return (np.asarray(ages_months, dtype=np.float64) // bin_months).astype(np.int64)


def category_weights(ages_months: Sequence[float], bin_months: int = 12) -> dict[int, float]:
    """{category: weight}, weights inversely proportional to the category's count, summing to 1."""
    cats, counts = np.unique(categories(ages_months, bin_months), return_counts=True)
    inverse = 1.0 / counts
    return {int(c): float(w) for c, w in zip(cats, inverse / inverse.sum(), strict=True)}


def sample_probabilities(ages_months: Sequence[float], bin_months: int = 12) -> np.ndarray:
    """Probability of drawing each image: its category's weight shared among the category's images."""
    cats = categories(ages_months, bin_months)
    weights = category_weights(ages_months, bin_months)
    counts = {c: int((cats == c).sum()) for c in weights}
    return np.array([weights[c] / counts[c] for c in cats])


def expected_repeats(ages_months: Sequence[float], epoch_size: int | None = None, bin_months: int = 12) -> np.ndarray:
    """How many (augmented) samples of each image an epoch holds on average; sums to ``epoch_size``
    (default: the number of images, so an epoch costs the same as an unweighted one)."""
    n = len(ages_months) if epoch_size is None else epoch_size
    return sample_probabilities(ages_months, bin_months) * n


def draw_repeats(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer repeats with the given expectation: floor plus one more with the fractional part's chance."""
    base = np.floor(expected)
    return (base + (rng.random(len(expected)) < expected - base)).astype(np.int64)


def distribution_table(ages_months: Sequence[float], epoch_size: int | None = None,
                       bin_months: int = 12) -> list[dict]:
    """Per category: images, weight, and expected samples per epoch; for the training log."""
    cats = categories(ages_months, bin_months)
    weights = category_weights(ages_months, bin_months)
    expected = expected_repeats(ages_months, epoch_size, bin_months)
    return [{"category": f"{c * bin_months}-{(c + 1) * bin_months} m", "images": int((cats == c).sum()),
             "weight": round(w, 4), "samples_per_epoch": round(float(expected[cats == c].sum()), 1)}
            for c, w in sorted(weights.items())]
