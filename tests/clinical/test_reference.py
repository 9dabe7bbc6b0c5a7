"""The maturity category from the SDS range, on constructed numbers: a category only when the whole range says so."""

from __future__ import annotations

import numpy as np
import pytest

from boneage.clinical.reference import Reference, maturity_category, sds_text

# SD 10 months at every age: SDS = months / 10.
FLAT = Reference(name="flat-10", table={"F": (np.array([0.0, 240.0]), np.array([10.0, 10.0]))})


@pytest.mark.parametrize(("low", "high", "category"), [
    (-3.5, -2.01, "delayed"),        # wholly below -2
    (-2.9, 1.7, "indeterminate"),   # straddles -2
    (-2.0, 2.0, "average"),          # within [-2, +2], ends included
    (-1.0, 2.5, "indeterminate"),   # straddles +2
    (2.01, 4.0, "advanced"),         # wholly above +2
    (-3.0, 3.0, "indeterminate"),   # wider than the whole average range
    (None, None, "indeterminate"),  # no interval: nothing says how far the SDS may be off
])
def test_the_category_is_stated_only_when_the_whole_range_is_on_one_side(low, high, category):
    assert maturity_category(low, high) == category


def test_compare_turns_the_interval_ends_into_the_sds_range_with_the_sd_at_the_chronological_age():
    straddling = FLAT.compare(114.0, 120.0, "F", (91.0, 137.0))
    assert (straddling.sds, straddling.sds_low, straddling.sds_high) == pytest.approx((-0.6, -2.9, 1.7))
    assert straddling.category == "indeterminate"
    below = FLAT.compare(80.0, 120.0, "F", (70.0, 90.0))
    assert (below.sds_low, below.sds_high, below.category) == (-5.0, -3.0, "delayed")
    point_only = FLAT.compare(60.0, 120.0, "F")  # SDS -6, but no interval: no range, no claim
    assert (point_only.sds, point_only.sds_low, point_only.sds_high, point_only.category) == (-6.0, None, None,
                                                                                              "indeterminate")
    outside = FLAT.compare(100.0, 300.0, "F", (90.0, 110.0))  # beyond the table: no SDS at all
    assert (outside.sds, outside.sds_low, outside.category) == (None, None, None)


def test_one_wording_for_every_output():
    assert sds_text(-0.6, -2.9, 1.7, "indeterminate") == "SDS -0.6 (-2.9 to +1.7), indeterminate"
    assert sds_text(-6.0, None, None, "indeterminate") == "SDS -6.0 (no interval), indeterminate"
    assert sds_text(None, None, None, None) is None
