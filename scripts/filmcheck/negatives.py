"""Films that are not hands, for training and for measuring the film check (boneage.prepare.filmcheck).

Two separate sources, never mixed:

- ``synthetic(kind, rng)``: generated 100 x 100 films. ``TRAIN_KINDS`` are the only negatives the
  network is trained on; ``HELD_OUT_KINDS`` are generated only for measuring.
- ``real_negatives()``: real images found on this machine, used only for measuring, in three sets
  looked at one after the other (README "Films that are not hands" says what each one changed). The
  first (``seen``): the CR extremity
  DICOM of ``../shared/data/dicom`` (whole, turned, and cropped at several scales), the DICOM test
  files that ship with pydicom (CT, MR, ultrasound, secondary captures), photographs (matplotlib's
  Grace Hopper and its crops, photos in the Rust documentation, Minduka's product photo), and
  screenshots, plots and icons from documentation and desktop packages.
"""

from __future__ import annotations

import glob
import string
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from boneage.errors import ImageReadError
from boneage.files.images import read_image
from boneage.prepare.filmcheck import INPUT_SIZE, orient

S = INPUT_SIZE
TRAIN_KINDS = ("gaussian_noise", "uniform_noise", "blank", "linear_gradient", "radial_gradient", "blobs",
               "text", "shapes", "shuffled_hand", "rods", "silhouette", "polygons")
HELD_OUT_KINDS = ("salt_pepper", "stripes", "checkerboard", "multi_octave_noise", "blank_with_text_label")


def _norm(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = x - x.min()
    x = x / max(x.max(), 1e-6)
    lo, hi = sorted(rng.uniform(0, 255, 2))
    return np.clip(lo + x * max(hi - lo, 5), 0, 255).astype(np.uint8)


def _text(img: np.ndarray, rng: np.random.Generator, lines: int) -> np.ndarray:
    for _ in range(lines):
        word = "".join(rng.choice(list(string.ascii_letters + string.digits + " :/-"), rng.integers(2, 14)))
        cv2.putText(img, word, (int(rng.integers(-10, 60)), int(rng.integers(8, 100))), int(rng.integers(0, 8)),
                    float(rng.uniform(0.25, 1.2)), int(rng.integers(0, 256)), int(rng.integers(1, 3)))
    return img


def synthetic(kind: str, rng: np.random.Generator, hand: np.ndarray | None = None) -> np.ndarray:
    """One 100 x 100 uint8 negative of ``kind`` (``shuffled_hand`` needs a hand to cut up)."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S
    if kind == "gaussian_noise":
        return np.clip(rng.normal(rng.uniform(30, 220), rng.uniform(5, 80), (S, S)), 0, 255).astype(np.uint8)
    if kind == "uniform_noise":
        return _norm(rng.uniform(0, 1, (S, S)), rng)
    if kind == "blank":
        return np.clip(rng.uniform(0, 255) + rng.normal(0, rng.uniform(0, 3), (S, S)), 0, 255).astype(np.uint8)
    if kind == "linear_gradient":
        a = rng.uniform(0, 2 * np.pi)
        return _norm(np.cos(a) * xx + np.sin(a) * yy, rng)
    if kind == "radial_gradient":
        cy, cx = rng.uniform(0, 1, 2)
        return _norm(-np.hypot(yy - cy, xx - cx) ** rng.uniform(0.5, 2), rng)
    if kind == "blobs":
        return _norm(cv2.GaussianBlur(rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0), rng.uniform(2, 15)), rng)
    if kind == "text":
        img = np.full((S, S), rng.integers(0, 256), np.uint8)
        return _text(img, rng, int(rng.integers(1, 8)))
    if kind == "shapes":
        img = np.full((S, S), rng.integers(0, 256), np.uint8)
        for _ in range(rng.integers(1, 10)):
            c, v = tuple(int(t) for t in rng.integers(0, S, 2)), int(rng.integers(0, 256))
            if rng.random() < 0.4:
                cv2.circle(img, c, int(rng.integers(3, 40)), v, -1 if rng.random() < 0.5 else 2)
            elif rng.random() < 0.7:
                cv2.rectangle(img, c, tuple(int(t) for t in rng.integers(0, S, 2)), v, -1 if rng.random() < 0.5 else 2)
            else:
                cv2.line(img, c, tuple(int(t) for t in rng.integers(0, S, 2)), v, int(rng.integers(1, 6)))
        return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 2))
    if kind == "shuffled_hand":  # a hand's own texture and grey levels, without a hand's shape
        assert hand is not None
        n = int(rng.choice([4, 5]))
        b = S // n
        tiles = [hand[i * b:(i + 1) * b, j * b:(j + 1) * b] for i in range(n) for j in range(n)]
        order = rng.permutation(len(tiles))
        rows = [np.hstack([tiles[order[i * n + j]] for j in range(n)]) for i in range(n)]
        return cv2.resize(np.vstack(rows), (S, S), interpolation=cv2.INTER_NEAREST)
    if kind == "rods":  # long bones in soft tissue: what an arm, leg or foot film looks like from afar
        img = np.zeros((S, S), np.float32)
        for _ in range(rng.integers(1, 4)):
            p0, p1 = rng.uniform(-10, 110, 2), rng.uniform(-10, 110, 2)
            w = rng.uniform(4, 18)
            cv2.line(img, tuple(int(t) for t in p0), tuple(int(t) for t in p1), 0.45, int(w * 2.2))
            cv2.line(img, tuple(int(t) for t in p0), tuple(int(t) for t in p1), 1.0, int(w))
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(1, 4)) + rng.normal(0, 0.03, (S, S)).astype(np.float32)
        return _norm(img, rng)
    if kind == "silhouette":  # one smooth textured object on a plain background: an icon, a logo, a limb afar
        field = cv2.GaussianBlur(rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0), rng.uniform(6, 16))
        inside = field > np.quantile(field, rng.uniform(0.3, 0.85))
        texture = cv2.GaussianBlur(rng.normal(0, 1, (S, S)).astype(np.float32), (0, 0), rng.uniform(0.5, 4))
        fg, bg = rng.uniform(0, 1, 2)
        img = np.where(inside, fg + rng.uniform(0, 0.4) * texture, bg).astype(np.float32)
        return np.clip(cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5)) * 255, 0, 255).astype(np.uint8)
    if kind == "polygons":  # flat graphics: filled polygons with shading and outlines
        img = np.full((S, S), rng.uniform(0, 1), np.float32)
        for _ in range(rng.integers(1, 5)):
            pts = (rng.uniform(0, 1, (int(rng.integers(3, 10)), 2)) * rng.uniform(30, 100) + rng.uniform(-10, 60, 2))
            layer = np.zeros((S, S), np.uint8)
            cv2.fillPoly(layer, [pts.astype(np.int32)], 1)
            a = rng.uniform(0, 2 * np.pi)
            shade = rng.uniform(0, 1) + rng.uniform(-0.5, 0.5) * (np.cos(a) * xx + np.sin(a) * yy)
            img = np.where(layer > 0, shade, img)
            if rng.random() < 0.5:
                cv2.polylines(img, [pts.astype(np.int32)], True, float(rng.uniform(0, 1)), int(rng.integers(1, 4)))
        return np.clip(img * 255, 0, 255).astype(np.uint8)
    if kind == "salt_pepper":
        img = np.full((S, S), rng.integers(0, 256), np.uint8)
        hit = rng.random((S, S)) < rng.uniform(0.05, 0.5)
        img[hit] = rng.choice([0, 255], int(hit.sum()))
        return img
    if kind == "stripes":
        f, a = rng.uniform(2, 20), rng.uniform(0, np.pi)
        return _norm(np.sin(2 * np.pi * f * (np.cos(a) * xx + np.sin(a) * yy)), rng)
    if kind == "checkerboard":
        n = int(rng.integers(2, 12))
        return _norm(((np.floor(xx * n) + np.floor(yy * n)) % 2).astype(np.float32), rng)
    if kind == "multi_octave_noise":
        total = sum(cv2.resize(rng.normal(0, 1, (k, k)).astype(np.float32), (S, S), interpolation=cv2.INTER_CUBIC) / k
                    for k in (3, 6, 12, 25, 50))
        return _norm(total, rng)
    if kind == "blank_with_text_label":  # an empty film with only a side marker and a date on it
        img = np.clip(rng.uniform(0, 60) + rng.normal(0, 2, (S, S)), 0, 255).astype(np.uint8)
        return _text(img, rng, int(rng.integers(1, 3)))
    raise ValueError(f"unknown negative kind {kind!r}")


def _films(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern, recursive=True))


def _site(*parts: str) -> str:
    return str(Path(sys.prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages", *parts))


def real_sources(shared: str) -> dict[str, list[str]]:
    """Kind -> files (those missing on a machine are simply absent)."""
    return {
        "cr_extremity_dicom": _films(f"{shared}/data/dicom/*.dcm"),
        "other_dicom": _films(_site("pydicom", "data", "test_files", "*.dcm")),
        "photograph": [*_films(_site("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")),
                       *_films(_site("matplotlib", "mpl-data", "sample_data", "Minduka_Present_Blue_Pack.png")),
                       *_films("/root/.rustup/toolchains/stable-*/share/doc/rust/html/embedded-book/assets/*.jp*g")],
        "screen_or_graphic": [*_films("/usr/share/doc/nodejs/contributing/doc_img/*.png"),
                              *_films(_site("networkx", "drawing", "tests", "baseline", "*.png")),
                              *_films(_site("matplotlib", "mpl-data", "sample_data", "logo2.png")),
                              *_films("/usr/share/doc/valgrind/html/images/*.png"),
                              *_films("/usr/share/icons/Adwaita/512x512/*/*.png")[::3]],
    }


def fresh_sources() -> dict[str, list[str]]:
    """Real negatives kept untouched until the film check and its thresholds were final: other icons of
    the same desktop theme, diagrams and screenshots of the Rust books, plots of other packages."""
    rust = "/root/.rustup/toolchains/stable-*/share/doc/rust/html"
    adwaita = _films("/usr/share/icons/Adwaita/512x512/*/*.png")
    return {
        "icon": [p for i, p in enumerate(adwaita) if i % 3],  # real_sources took every third
        "screen_or_diagram": [*_films(f"{rust}/book/img/*.png"), *_films(f"{rust}/cargo/images/*.png"),
                              *_films(f"{rust}/rustc/images/*.png"), *_films(f"{rust}/rustdoc/images/*.png"),
                              *_films(f"{rust}/embedded-book/assets/*.png"), *_films(f"{rust}/book/*-edition/img/*.png"),
                              *_films(_site("sympy", "plotting", "tests", "*.png")),
                              *_films("/usr/share/doc/python3-pip/html/topics/*.png"),
                              *_films("/usr/share/icons/hicolor/256x256/apps/*.png")],
    }


def final_sources() -> dict[str, list[str]]:
    """A third set, untouched until the texture signal was added and every threshold final: images of
    the Google Cloud SDK's bundled packages and of other documentation on this machine."""
    sdk = "/usr/lib/google-cloud-sdk"
    return {
        "logo_photo_or_diagram": [*_films(f"{sdk}/**/*.png"), *_films(f"{sdk}/**/*.jpg"), *_films(f"{sdk}/**/*.gif"),
                                  *_films("/usr/share/doc/libxslt1-dev/html/*.png"), *_films("/usr/share/info/*.png"),
                                  *_films("/usr/share/doc/nodejs/*.png"), *_films("/usr/share/doc/libpng-dev/examples/*.png")],
    }


def _crops(film: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """The film, its turns and mirror, and crops at 70%, 50% and 35% of its size on a 3 x 3 grid."""
    for i in range(8):
        yield f"orient{i}", orient(film, i)
    h, w = film.shape
    for scale in (0.7, 0.5, 0.35):
        ch, cw = int(h * scale), int(w * scale)
        for fy in (0.0, 0.5, 1.0):
            for fx in (0.0, 0.5, 1.0):
                y, x = int((h - ch) * fy), int((w - cw) * fx)
                yield f"crop{scale}_{fy}_{fx}", film[y:y + ch, x:x + cw]


def real_negatives(shared: str, which: str = "seen") -> Iterator[tuple[str, str, np.ndarray]]:
    """(kind, name, full film) for every real negative of one set: ``seen`` (:func:`real_sources`),
    ``fresh`` or ``final``; the CR film and the photograph of a person also as crops at several scales
    and in every orientation."""
    sources = {"seen": lambda: real_sources(shared), "fresh": fresh_sources, "final": final_sources}[which]()
    for kind, files in sources.items():
        for path in files:
            try:
                film = read_image(path).pixels
            except ImageReadError:
                continue
            if film.ndim != 2 or min(film.shape) < 16:
                continue
            name = Path(path).name
            if kind == "cr_extremity_dicom" or name == "grace_hopper.jpg":
                for suffix, crop in _crops(film):
                    yield kind, f"{name}:{suffix}", crop
            else:
                yield kind, name, film
