"""scripts/hires_model/compare.py: the paired difference that says whether one model's MAE is really lower
than another's on the same films, and the width of each group's bias."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hires_model" / "compare.py"
spec = importlib.util.spec_from_file_location("compare", SCRIPT)
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def frame(ids, true, pred) -> pd.DataFrame:
    return pd.DataFrame({"id": [str(i) for i in ids], "true": true, "pred": pred, "male": 1.0})


def test_a_constant_gap_is_measured_exactly_and_only_on_the_films_both_scored():
    rng = np.random.default_rng(0)
    true = rng.uniform(10, 220, 60)
    error = rng.normal(0, 8, 60)
    reference = frame(range(60), true, true + error)
    worse = frame(range(60), true, true + error + 2 * np.sign(error))  # each film 2 months further off
    worse = pd.concat([worse, frame([999], [100.0], [400.0])])  # scored by one run only: left out
    d = compare.paired_difference(worse, reference)
    assert d["n"] == 60
    assert d["mae_difference"] == 2.0 and d["ci95"] == [2.0, 2.0]


def test_noise_gives_an_interval_that_holds_zero_and_the_table_reports_it(tmp_path, capsys):
    rng = np.random.default_rng(1)
    true = rng.uniform(10, 220, 150)
    a = frame(range(150), true, true + rng.normal(0, 10, 150))
    b = frame(range(150), true, true + rng.normal(0, 10, 150))  # same error, other draws
    d = compare.paired_difference(b, a)
    assert d["ci95"][0] < 0 < d["ci95"][1]
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_csv(tmp_path / "b.csv", index=False)
    assert compare.main([f"a={tmp_path / 'a.csv'}", f"b={tmp_path / 'b.csv'}", "--against", "a",
                         "--json", str(tmp_path / "t.json")]) == 0
    assert "- b: " in capsys.readouterr().out
    table = json.loads((tmp_path / "t.json").read_text())
    assert table["b"]["against"]["a"] == d
    overall = table["b"]["overall"]
    # the bias's half-width: 1.96 sd / sqrt(n), about 1.6 months for 150 films with sd 10
    assert 1.2 < overall["bias_ci95"] < 2.0


def test_pooled_sets_keep_the_same_film_of_two_sets_apart(tmp_path):
    frame([1, 2], [50.0, 60.0], [55.0, 60.0]).to_csv(tmp_path / "b.csv", index=False)
    frame([1], [120.0], [100.0]).to_csv(tmp_path / "c.csv", index=False)
    pooled = compare.read_predictions([str(tmp_path / "b.csv"), str(tmp_path / "c.csv")])
    assert list(pooled["id"]) == ["0:1", "0:2", "1:1"]
    assert compare.figures(pooled)["overall"]["mae"] == round(25 / 3, 2)
