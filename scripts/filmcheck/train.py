"""Train the film check (boneage/prepare/filmcheck.py) on RSNA hands and synthetic negatives, then fit its thresholds.

    python scripts/filmcheck/train.py --shared ../shared --out out/filmcheck [--steps 3000] [--resume]

Hands: rsna-100px split by id. The bone-age model's 10% validation split (``in_validation(id, 0.1)``)
and the 52 ``rsna/train`` ids are never trained on; a further 10% of the rest ("tune") sets the
thresholds. Negatives: ``negatives.TRAIN_KINDS`` only. Writes ``OUT/filmcheck.pt`` and
``OUT/fit.json``; ``measure.py`` gives the figures. Checkpoints every 200 steps (``--resume``; a
finished run resumed only refits the statistics and thresholds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from negatives import TRAIN_KINDS, synthetic  # noqa: E402

from boneage.prepare.filmcheck import N_ORIENTATIONS, OTHER, FilmCheck, FilmCheckNet, Gaussian, Thresholds  # noqa: E402
from boneage.train.data import in_validation  # noqa: E402


def load_hands(shared: str, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids, N x 100 x 100 uint8) of rsna-100px, cached as one .npz."""
    if cache.exists():
        data = np.load(cache)
        return data["ids"], data["images"]
    root = Path(shared, "data", "rsna-100px")
    ids = pd.read_csv(root / "boneage-training-dataset.csv")["id"].astype(str).to_numpy().astype("U16")
    images = np.stack([cv2.imread(str(root / "images" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in ids])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, ids=ids, images=images)
    return ids, images


def split(ids: np.ndarray, shared: str) -> np.ndarray:
    """'test' (the bone-age validation split and rsna/train), 'tune' or 'train' for each id."""
    full_size = set(pd.read_csv(Path(shared, "data", "rsna", "train.csv"))["id"].astype(str))
    return np.array(["test" if in_validation(i, 0.1) or i in full_size
                     else "tune" if in_validation(f"filmcheck-tune-{i}", 0.1) else "train" for i in ids])


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small turns, zoom and shifts (a hand is never framed twice the same way), then grey-level changes."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    # zoomed in (3 in 10): films cropped close to the hand, as many uploaded or exported films are
    angle, scale = u(-0.21, 0.21), torch.where(torch.rand(n, generator=gen) < 0.3, u(1.2, 1.7), u(0.85, 1.2))
    sx, sy = scale * u(0.9, 1.1), scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle) / sx, -torch.sin(angle) / sx
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle) / sy, torch.cos(angle) / sy
    theta[:, 0, 2], theta[:, 1, 2] = u(-0.1, 0.1), u(-0.1, 0.1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border",
                      align_corners=False)
    gamma = torch.exp(u(-0.5, 0.5))[:, None, None, None]
    x = x.clamp(1e-4, 1) ** gamma
    x = x * u(0.7, 1.3)[:, None, None, None] + u(-0.15, 0.15)[:, None, None, None]
    x = x + torch.randn(x.shape, generator=gen) * u(0, 0.04)[:, None, None, None]
    return x.clamp(0, 1)


def make_batch(hands: np.ndarray, rng: np.random.Generator, gen: torch.Generator, size: int,
               p_negative: float = 0.2, p_upright: float = 0.55) -> tuple[torch.Tensor, torch.Tensor]:
    kinds = rng.random(size)
    labels = np.where(kinds < p_negative, OTHER, 0)
    turned = (kinds >= p_negative) & (kinds < p_negative + (1 - p_negative) * (1 - p_upright))
    labels[turned] = rng.integers(1, N_ORIENTATIONS, int(turned.sum()))
    picks = hands[rng.integers(0, len(hands), size)]
    images = np.stack([synthetic(TRAIN_KINDS[rng.integers(len(TRAIN_KINDS))], rng, hand=h) if lab == OTHER else h
                       for h, lab in zip(picks, labels, strict=True)])
    x = augment(torch.from_numpy(images).float()[:, None] / 255.0, gen)
    for i, lab in enumerate(labels):  # orient after augmenting: torch's flip + rot90 equal filmcheck.orient
        if 0 < lab < OTHER:
            xi = torch.flip(x[i], [-1]) if lab >= 4 else x[i]
            x[i] = torch.rot90(xi, int(lab % 4), [-2, -1])
    return x, torch.from_numpy(labels)


@torch.inference_mode()
def features(net: FilmCheckNet, images: np.ndarray, batch: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, features, texture statistics) of upright films, unaugmented."""
    out: list[list[np.ndarray]] = [[], [], []]
    for s in range(0, len(images), batch):
        logits, f, t = net(torch.from_numpy(images[s:s + batch]).float()[:, None] / 255.0)
        for part, value in zip(out, (torch.softmax(logits, 1), f, t), strict=True):
            part.append(value.numpy())
    return tuple(np.concatenate(part) for part in out)


def fit_check(net: FilmCheckNet, train: np.ndarray, tune: np.ndarray, meta: dict) -> FilmCheck:
    """The hands' feature and texture statistics (train hands) and the thresholds (tune hands): each
    signal may refuse a small share of the tune hands, the rule's budget being 1% in all: 0.3% for
    the hand probability (never above 0.5) and the features, 0.1% for the texture."""
    net.eval()
    _, train_feats, train_texture = features(net, train)
    check = FilmCheck(net, Gaussian.fit(train_feats), Gaussian.fit(train_texture), Thresholds())
    probs, tune_feats, tune_texture = features(net, tune)  # one pass over the tune hands
    dist, texture = check.features.distance(tune_feats), check.texture.distance(tune_texture)
    p_hand = 1 - probs[:, OTHER]
    check.thresholds = Thresholds(min_p_hand=float(min(0.5, np.quantile(p_hand, 0.003))),
                                  max_distance=float(np.quantile(dist, 0.997)),
                                  max_texture_distance=float(np.quantile(texture, 0.999)))
    quantiles = (0.5, 0.9, 0.99, 0.997, 0.999, 1.0)
    check.metadata = {**meta, "train_hands": int(len(train)), "tune_hands": int(len(tune)),
                      **dataclasses.asdict(check.thresholds),
                      "tune_distance_quantiles": {q: float(np.quantile(dist, q)) for q in quantiles},
                      "tune_texture_quantiles": {q: float(np.quantile(texture, q)) for q in quantiles},
                      "tune_p_hand_quantiles": {q: float(np.quantile(p_hand, q)) for q in (0.0, 0.001, 0.003, 0.01)},
                      "train_kinds": list(TRAIN_KINDS)}
    return check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared")
    ap.add_argument("--out", default="out/filmcheck")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ids, images = load_hands(args.shared, out / "hands.npz")
    side = split(ids, args.shared)
    train = images[side == "train"]
    print(f"hands: {len(train)} train, {(side == 'tune').sum()} tune, {(side == 'test').sum()} test", flush=True)

    torch.manual_seed(0)
    net = FilmCheckNet(width=args.width)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    step, state_path = 0, out / "train_state.pt"
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step = int(state["step"])
        print(f"resumed at step {step}", flush=True)
    rng, gen = np.random.default_rng(step + 1), torch.Generator().manual_seed(step + 1)
    net.train()
    start, seen, running = time.time(), 0, []
    while step < args.steps:
        x, y = make_batch(train, rng, gen, args.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _, _ = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.02)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        seen += len(y)
        running.append(float(loss.detach()))
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {np.mean(running):.4f} {seen / (time.time() - start):.0f} samples/s",
                  flush=True)
            running = running[-1:]
        if step % 200 == 0 or step == args.steps:
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step},
                       state_path)

    minutes = round((time.time() - start) / 60, 1)
    if seen == 0 and (out / "fit.json").exists():  # only refitted: the training's own time
        minutes = json.loads((out / "fit.json").read_text()).get("minutes", minutes)
    meta = {"steps": args.steps, "batch": args.batch, "width": args.width, "minutes": minutes}
    check = fit_check(net, train, images[side == "tune"], meta)
    check.save(str(out / "filmcheck.pt"))
    (out / "fit.json").write_text(json.dumps(check.metadata, indent=2))
    print(json.dumps(check.metadata, indent=2))
    if running and math.isnan(running[-1]):
        raise SystemExit("training diverged")


if __name__ == "__main__":
    main()
