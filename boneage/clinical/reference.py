"""Bone age compared with chronological age: difference, SDS against a published reference, category.

The reference is a data file (``boneage/clinical/references/*.csv``: ``sex,age_months,sd_months``), so a
hospital can swap in its own with ``--reference FILE`` or ``$BONEAGE_REFERENCE``; its provenance is
in ``boneage/clinical/references/README.md``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from boneage.files import storage

REFERENCE_ENV = "BONEAGE_REFERENCE"
DEFAULT_REFERENCE = Path(__file__).with_name("references") / "greulich_pyle_brush_sd.csv"
# Maturity categories (the seed's "early, average, late"): beyond 2 SD of the reference population is
# the usual clinical threshold for a delayed or advanced bone age. A category is stated only when the
# whole SDS range of the bone-age interval is on one side of a threshold (:func:`maturity_category`).
DELAYED_BELOW_SDS = -2.0
ADVANCED_ABOVE_SDS = 2.0


@dataclass(frozen=True)
class Comparison:
    """Bone age against chronological age; ``sds`` and ``category`` are None outside the reference's ages,
    ``sds_low`` and ``sds_high`` (the interval's ends as SDS) also without an interval."""

    minus_chronological_months: float | None
    sds: float | None
    category: str | None
    reference: str | None
    sds_low: float | None = None
    sds_high: float | None = None


@dataclass(frozen=True)
class Reference:
    """Standard deviation of bone age by chronological age (months) and sex, linearly interpolated."""

    name: str
    table: dict[str, tuple[np.ndarray, np.ndarray]]  # sex -> (ages, sds), ages increasing

    def sd(self, age_months: float, sex: str) -> float | None:
        """The SD at this age, or None outside the tabulated range (no extrapolation)."""
        if sex not in self.table:
            return None
        ages, sds = self.table[sex]
        if not ages[0] <= age_months <= ages[-1]:
            return None
        return float(np.interp(age_months, ages, sds))

    def compare(self, bone_age_months: float | None, chronological_age_months: float | None,
                sex: str | None, interval: tuple[float, float] | None = None) -> Comparison:
        """Difference in months, SDS, the SDS of the ``interval``'s ends (same SD: the one at the
        chronological age) and the maturity category; None fields when an input is missing."""
        if bone_age_months is None or chronological_age_months is None:
            return Comparison(None, None, None, None)
        chrono = float(chronological_age_months)
        diff = float(bone_age_months) - chrono
        sd = self.sd(chrono, sex) if sex else None
        if sd is None or sd <= 0:
            return Comparison(round(diff, 2), None, None, self.name)
        low, high = (None, None) if interval is None else ((end - chrono) / sd for end in interval)
        return Comparison(round(diff, 2), round(diff / sd, 3), maturity_category(low, high), self.name,
                          sds_low=None if low is None else round(low, 3),
                          sds_high=None if high is None else round(high, 3))


def maturity_category(sds_low: float | None, sds_high: float | None) -> str:
    """The category of an SDS range, never claiming more than the range shows.

    ``delayed`` only when the whole range is below -2 (``sds_high`` < -2), ``advanced`` only when it is
    all above +2 (``sds_low`` > +2), ``average`` when it lies within [-2, +2], otherwise
    ``indeterminate``. Without a range (a model with no interval calibration) nothing says how far
    the point SDS may be off, so the category is ``indeterminate`` too; the SDS is still given.
    """
    if sds_low is None or sds_high is None:
        return "indeterminate"
    if sds_high < DELAYED_BELOW_SDS:
        return "delayed"
    if sds_low > ADVANCED_ABOVE_SDS:
        return "advanced"
    if sds_low >= DELAYED_BELOW_SDS and sds_high <= ADVANCED_ABOVE_SDS:
        return "average"
    return "indeterminate"


def sds_text(sds: float | None, sds_low: float | None, sds_high: float | None, category: str | None) -> str | None:
    """``SDS -0.6 (-2.9 to +1.7), indeterminate``: the one wording of every output (None without an SDS)."""
    if sds is None:
        return None
    interval = "no interval" if sds_low is None or sds_high is None else f"{sds_low:+.1f} to {sds_high:+.1f}"
    return f"SDS {sds:+.1f} ({interval}), {category}"


def load_reference(uri: str | None = None) -> Reference:
    """From ``uri``, else ``$BONEAGE_REFERENCE``, else the shipped Greulich-Pyle / Brush Foundation table."""
    uri = uri or os.environ.get(REFERENCE_ENV) or str(DEFAULT_REFERENCE)
    text = storage.read_bytes(uri).decode("utf-8")
    name = Path(uri).stem
    for line in text.splitlines():
        if line.startswith("#") and line.lstrip("# ").lower().startswith("name:"):
            name = line.split(":", 1)[1].strip() or name
    frame = pd.read_csv(io.StringIO(text), comment="#", dtype={"sex": str})
    missing = {"sex", "age_months", "sd_months"} - set(frame.columns)
    if missing:
        raise ValueError(f"{uri}: a reference needs columns sex,age_months,sd_months; missing {sorted(missing)}")
    table = {}
    for sex, group in frame.groupby(frame["sex"].str.strip().str.upper()):
        group = group.sort_values("age_months")
        ages = group["age_months"].to_numpy(dtype=float)
        if len(ages) < 2 or np.any(np.diff(ages) <= 0):
            raise ValueError(f"{uri}: sex {sex} needs at least two distinct ages")
        table[str(sex)] = (ages, group["sd_months"].to_numpy(dtype=float))
    return Reference(name=name, table=table)
