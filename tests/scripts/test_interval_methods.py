"""scripts/hires_model/interval_methods.py: the table that chose how the age bands get their width."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "hires_model" / "interval_methods.py"
spec = importlib.util.spec_from_file_location("interval_methods", SCRIPT)
interval_methods = importlib.util.module_from_spec(spec)
spec.loader.exec_module(interval_methods)


def films(path: Path, n: int, seed: int) -> str:
    """Predictions whose error is 4 months under 5 years and 16 above: one width cannot fit both."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(10.0, 220.0, n)
    pd.DataFrame({"id": range(n), "true": true, "pred": true + rng.normal(0, np.where(true < 60, 4.0, 16.0))}
                 ).to_csv(path, index=False)
    return str(path)


def test_each_method_is_measured_on_films_it_never_saw(tmp_path, monkeypatch, capsys):
    calibration, test = films(tmp_path / "cal.csv", 150, 0), films(tmp_path / "test.csv", 400, 1)
    monkeypatch.setattr(sys, "argv", ["interval_methods", calibration, f"fresh={test}", "--seeds", "5"])
    interval_methods.main()
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["pooled", "bands, scale", "bands, quantile"]

    def under_5_width(row: str) -> float:  # "(90% 13 / ..." : the first band's width
        return float(row.split(" | ")[1].split("(")[1].split()[1])

    assert under_5_width(rows["bands, scale"]) < under_5_width(rows["pooled"]) / 2  # banded: the toddlers narrow
    coverage = float(rows["bands, scale"].split(" | ")[1].split("%")[0])
    assert 80.0 < coverage < 97.0
