"""Children maturing exactly on time: how many get a firm ``delayed`` or ``advanced``?

    python scripts/hires_model/on_time.py eval/b/predictions.csv [eval/c/predictions.csv ...]

Each held-out film's chronological age is set to its true bone age, so the truth is SDS 0 and any firm
category is the model's error. Counted twice: by the point estimate's SDS alone (the rule before
issue 27) and by the SDS range of the interval (``boneage.clinical.reference.maturity_category``).
"""

from __future__ import annotations

import sys

import pandas as pd

from boneage.clinical.reference import load_reference


def count(path: str) -> dict:
    reference = load_reference()
    frame = pd.read_csv(path)
    point, ranged, n = {"delayed": 0, "advanced": 0}, {"delayed": 0, "advanced": 0}, 0
    for row in frame.itertuples():
        sex = "M" if row.male >= 0.5 else "F"
        age = float(row.true)
        has_interval = pd.notna(row.low) and pd.notna(row.high)
        by_point = reference.compare(row.pred, age, sex, (row.pred, row.pred))
        if by_point.sds is None:  # outside the reference's ages
            continue
        n += 1
        by_range = reference.compare(row.pred, age, sex, (row.low, row.high) if has_interval else None)
        for tally, comparison in ((point, by_point), (ranged, by_range)):
            if comparison.category in tally:
                tally[comparison.category] += 1
    return {"films": n, "firm_by_point": point, "firm_by_range": ranged}


def main(paths: list[str]) -> int:
    for path in paths:
        result = count(path)
        firm_point, firm_range = sum(result["firm_by_point"].values()), sum(result["firm_by_range"].values())
        print(f"{path}: {result['films']} films with an SDS; firm category by the point SDS {firm_point} "
              f"({firm_point / result['films']:.1%}) {result['firm_by_point']}; by the SDS range {firm_range} "
              f"({firm_range / result['films']:.1%}) {result['firm_by_range']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
