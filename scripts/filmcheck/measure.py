"""The film check's figures: false refusals on real hands, negatives caught, orientation found.

    python scripts/filmcheck/measure.py --shared ../shared [--filmcheck out/filmcheck/filmcheck.pt] --out out/filmcheck/measure

Every film goes through the whole preprocessing of the shipped model (``boneage.prepare.stages.preprocess``
with its config), so a refusal here is one a user would see: ``not_a_hand`` (the film check) or
``no_hand_found`` (the U-Net mask). Writes ``figures.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from negatives import HELD_OUT_KINDS, TRAIN_KINDS, real_negatives, synthetic  # noqa: E402
from train import load_hands, split  # noqa: E402

from boneage.files.images import read_image  # noqa: E402
from boneage.network.checkpoint import load_checkpoint  # noqa: E402
from boneage.predict.predictor import SHIPPED_MODEL  # noqa: E402
from boneage.prepare import filmcheck  # noqa: E402
from boneage.prepare.stages import preprocess  # noqa: E402


def verdicts(films, config) -> list[dict]:
    return [preprocess(f, config).quality_flags() for f in films]


def rate(rows: list[dict], key: str = "verdict", value: str = "refused") -> dict:
    n = sum(r[key] == value for r in rows)
    return {"n": len(rows), "count": n, "rate": round(n / max(len(rows), 1), 4),
            "by_reason": dict(collections.Counter(x for r in rows if r[key] == value
                                                  for x in (r["rejection"] or "").split(",") if x))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--filmcheck", help="a film check file (default: the shipped one)")
    ap.add_argument("--model", default=str(SHIPPED_MODEL), help="whose preprocessing config to run")
    ap.add_argument("--out", default="out/filmcheck/measure")
    ap.add_argument("--per-kind", type=int, default=100, help="synthetic negatives per kind")
    ap.add_argument("--skip-all-hands", action="store_true", help="only the held-out split, not all 12,611")
    args = ap.parse_args()
    if args.filmcheck:
        filmcheck.clear_cache()
        check = filmcheck.FilmCheck.load(args.filmcheck)
        filmcheck.get_filmcheck = lambda uri=None: check  # noqa: E731 - measure this file, not the shipped one
    config = load_checkpoint(args.model).preprocess
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    figures: dict = {"config": config.to_dict()}

    ids, images = load_hands(args.shared, out.parent / "hands.npz")
    side = split(ids, args.shared)
    hand_rows = verdicts(images if not args.skip_all_hands else images[side == "test"], config)
    sides = side if not args.skip_all_hands else side[side == "test"]
    figures["hands_100px_all"] = rate(hand_rows)
    for name in ("train", "tune", "test"):
        figures[f"hands_100px_{name}"] = rate([r for r, s in zip(hand_rows, sides, strict=True) if s == name])
    corrected = [r for r in hand_rows if r["orientation_corrected"]]
    figures["hands_100px_orientation_corrected"] = {"count": len(corrected), "n": len(hand_rows),
        "by_orientation": dict(collections.Counter(int(r["orientation_corrected"]) for r in corrected))}
    refused_ids = [str(i) for i, r in zip(ids if not args.skip_all_hands else ids[side == "test"], hand_rows, strict=True)
                   if r["verdict"] == "refused"]
    figures["hands_100px_refused_ids"] = refused_ids[:200]
    print(f"100 px hands: {figures['hands_100px_all']}  ({time.time() - started:.0f} s)", flush=True)

    full = []
    for part in ("train", "val"):
        labels = pd.read_csv(Path(args.shared, "data", "rsna", f"{part}.csv"))
        for i in labels["id"].astype(str):
            row = preprocess(read_image(str(Path(args.shared, "data", "rsna", part, f"{i}.png"))).pixels, config).quality_flags()
            full.append(row | {"id": i, "part": part})
    figures["hands_full_size"] = rate(full)
    figures["hands_full_size_refused"] = [(r["id"], r["reasons"]) for r in full if r["verdict"] == "refused"]
    figures["hands_full_size_corrected"] = [(r["id"], r["orientation_corrected"]) for r in full if r["orientation_corrected"]]
    figures["hands_full_size_low_contrast"] = sum(r["low_contrast"] for r in full)
    ex = [preprocess(read_image(str(p)).pixels, config).quality_flags()
          for p in sorted(Path(args.shared, "data", "examples").glob("*.png"))]
    figures["hands_examples"] = rate(ex)
    print(f"full-size hands: {figures['hands_full_size']}", flush=True)

    # orientation: the held-out hands in each of the eight orientations
    test = images[side == "test"]
    found = {}
    for k in range(8):
        seen = check_findings(filmcheck.orient(test, k))
        found[k] = {"found_as_k": round(float(np.mean([f.orientation == k and not f.not_a_hand for f in seen])), 4),
                    "not_a_hand": round(float(np.mean([f.not_a_hand for f in seen])), 4)}
    figures["orientation_held_out_hands"] = found
    print(f"orientation: {found}", flush=True)

    rng = np.random.default_rng(12345)  # not the training seeds
    neg: dict[str, list[dict]] = {}
    for kind in (*HELD_OUT_KINDS, *TRAIN_KINDS):
        films = [synthetic(kind, rng, hand=test[rng.integers(len(test))]) for _ in range(args.per_kind)]
        neg[f"synthetic_{'held_out' if kind in HELD_OUT_KINDS else 'train_kind_new_seed'}:{kind}"] = verdicts(films, config)
    real = collections.defaultdict(list)
    missed = []
    for kind, name, film in real_negatives(args.shared):
        row = preprocess(film, config).quality_flags()
        real[f"real:{kind}"].append(row)
        if row["verdict"] != "refused":
            missed.append((kind, name, row["p_hand"], row["hand_distance"], row["texture_distance"]))
    for which in ("fresh", "final"):
        for kind, name, film in real_negatives(args.shared, which):
            row = preprocess(film, config).quality_flags()
            real[f"{which}:{kind}"].append(row)
            if row["verdict"] != "refused":
                missed.append((f"{which}:{kind}", name, row["p_hand"], row["hand_distance"], row["texture_distance"]))
    neg.update(real)
    figures["negatives"] = {k: rate(v) for k, v in neg.items()}
    groups = {"real": [r for k, v in neg.items() if k.startswith("real:") for r in v],
              "real_fresh": [r for k, v in neg.items() if k.startswith("fresh:") for r in v],
              "real_final": [r for k, v in neg.items() if k.startswith("final:") for r in v],
              "real_all": [r for k, v in neg.items() if k.split(":")[0] in ("real", "fresh", "final") for r in v],
              "all": [r for v in neg.values() for r in v],
              "synthetic_held_out_kinds": [r for k, v in neg.items() if "held_out" in k for r in v],
              "synthetic_train_kinds_new_seeds": [r for k, v in neg.items() if "train_kind" in k for r in v]}
    figures["negatives_caught"] = {k: rate(v) for k, v in groups.items()}
    figures["negatives_missed_real"] = missed
    figures["seconds"] = round(time.time() - started)
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=str))
    print("\n| set | n | refused |\n|---|---|---|")
    for key in ("hands_100px_all", "hands_100px_test", "hands_full_size", "hands_examples"):
        f = figures[key]
        print(f"| {key} | {f['n']} | {f['count']} ({f['rate']:.2%}) {f['by_reason']} |")
    for key, f in {**figures["negatives_caught"], **figures["negatives"]}.items():
        print(f"| {key} | {f['n']} | {f['count']} ({f['rate']:.1%}) |")
    print(f"missed real negatives: {missed}")


def check_findings(films: np.ndarray) -> list:
    check = filmcheck.get_filmcheck()
    return [f for s in range(0, len(films), 512) for f in check.findings(films[s:s + 512])]


if __name__ == "__main__":
    cv2.setNumThreads(2)
    main()
