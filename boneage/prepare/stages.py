"""The seed's image pipeline as small pure stages, run as an ordered list of named steps (:data:`STEPS`)
by one saved configuration (:mod:`boneage.prepare.config`).

Training, bulk scoring and serving all call :func:`preprocess` with the ``PreprocessConfig`` stored
in the checkpoint, so the model always sees images prepared exactly as in training.

Order (seed, section 5.1, after the film check of :mod:`boneage.prepare.filmcheck`): low-contrast check -> hand
mask -> contour fill -> 11x11 dilation -> overlay -> crop to the hand -> CLAHE (clip 3.0, 8x8) -> Laplacian
sharpening -> pad to square -> resize 384. With ``domain_size`` the film is first squashed to the training
domain (see :func:`to_domain`), where the other stages are sized to the small image. The mask is computed at
``segment_size`` and applied at full resolution; CLAHE and sharpening run at ``enhance_size`` so a 5 Mpx film
costs milliseconds, and the sharpening acts at a scale that survives the final resize.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from boneage.prepare import filmcheck
from boneage.prepare.config import PRESETS as PRESETS  # re-exported: the presets live with the config
from boneage.prepare.config import PreprocessConfig
from boneage.prepare.segmentation import get_segmenter
from boneage.prepare.verdict import Verdict, quality_fields, status


@dataclass
class PreprocessResult:
    """``image`` is output_size x output_size uint8 (scale with :func:`to_unit_float` for the model).

    ``findings`` maps each reason found (``not_a_hand``, ``no_hand_found``, ``flipped_or_right_hand``,
    ``rotated``, ``low_contrast``; see :mod:`boneage.prepare.verdict`) to its detail. The image is produced
    even for a refused film, so callers choose to drop it, flag it or score it anyway.
    """

    image: np.ndarray
    contrast: float
    hand_fraction: float
    findings: dict[str, str]
    config_hash: str
    p_hand: float | None = None
    hand_distance: float | None = None
    texture_distance: float | None = None
    orientation: int = 0  # how the film was found (boneage.prepare.filmcheck.orient); it was turned back
    # width / height at which ``image`` shows the hand in its proportions on the film (the box was squared for
    # the model by "stretch", or the film squashed by ``domain_size``): a heatmap is shown at it
    hand_aspect: float | None = None

    @property
    def refused(self) -> bool:
        return status(self.findings) is Verdict.REFUSED

    @property
    def rejection(self) -> str | None:
        """The refusing reasons (comma-separated), None when the film may be scored."""
        return quality_fields(self.findings, {})["rejection"]

    def quality_flags(self, more: dict[str, str] | None = None) -> dict:
        """The quality record of outputs (:func:`boneage.prepare.verdict.quality_fields`), with ``more`` reasons
        found later (the chronological age)."""
        rnd = lambda v: None if v is None else round(v, 4)  # noqa: E731
        measures = {"contrast": rnd(self.contrast), "hand_fraction": rnd(self.hand_fraction),
                    "p_hand": rnd(self.p_hand), "hand_distance": rnd(self.hand_distance),
                    "texture_distance": rnd(self.texture_distance),
                    "orientation_corrected": self.orientation or None}
        return quality_fields({**self.findings, **(more or {})}, measures)


# --- stages ---------------------------------------------------------------------------------


def to_domain(image: np.ndarray, size: int) -> np.ndarray:
    """The whole film squashed to ``size`` x ``size`` by nearest-neighbour sampling, aspect not kept.

    This is Pillow's ``Image.resize((size, size))`` of 2018 (NEAREST, sampling pixel centres), which
    made rsna-100px: OpenCV's ``INTER_NEAREST_EXACT`` reproduces it pixel for pixel, so a full-size
    film lands exactly in the domain the model was trained on.
    """
    if image.shape == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)


def resize_long_side(image: np.ndarray, size: int) -> np.ndarray:
    """Downscale (area averaging) so the longer side is at most ``size``; never upscales."""
    h, w = image.shape[:2]
    scale = size / max(h, w)
    if scale >= 1.0:
        return image
    return cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def contrast_score(image: np.ndarray) -> float:
    """Spread of grey levels between the 1st and 99th percentiles, as a fraction of 255.

    The seed excluded low-contrast films; below 0.10 (about 26 grey levels) CLAHE mostly amplifies
    quantisation noise.
    """
    lo, hi = grey_percentiles(image, None, (1.0, 99.0))
    return float(hi - lo) / 255.0


def grey_percentiles(image: np.ndarray, mask: np.ndarray | None, percentiles: tuple[float, ...]) -> list[float]:
    """``np.percentile`` of a uint8 image's grey levels (under ``mask``), exactly (linear interpolation),
    from its 256-bin histogram: a few milliseconds less per full-size film than sorting its pixels."""
    counts = np.cumsum(cv2.calcHist([image], [0], mask, [256], [0, 256]).ravel())
    n = int(counts[-1])
    if n == 0:
        raise ValueError("no pixels to take percentiles of")
    out = []
    for p in percentiles:
        pos = p / 100.0 * (n - 1)
        below = int(np.floor(pos))
        low = int(np.searchsorted(counts, below + 1))  # the grey level of the (below)-th smallest pixel
        high = int(np.searchsorted(counts, min(below + 2, n)))
        out.append(low + (pos - below) * (high - low))
    return out


def fill_contours(mask: np.ndarray) -> np.ndarray:
    """Fill every external contour, closing holes inside the hand (seed 5.1.4)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 255, thickness=cv2.FILLED)
    return filled


def dilate_mask(mask: np.ndarray, kernel_size: int = 11) -> np.ndarray:
    """Grow the mask so the skin edge and thin bone tips are not cut off (seed 5.1.5)."""
    return cv2.dilate(mask, np.ones((kernel_size, kernel_size), np.uint8), iterations=1)


def apply_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Black out everything outside the hand: markers, letters, collimator edges (seed 5.1.6)."""
    return cv2.bitwise_and(image, image, mask=mask)


def hand_box(mask: np.ndarray, margin: float = 0.02) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a tight box around the mask plus a margin; the whole image when it is empty."""
    h, w = mask.shape
    x, y, bw, bh = cv2.boundingRect(mask)  # of the non-zero pixels; far faster than np.nonzero at full size
    if bw == 0 or bh == 0:
        return 0, h, 0, w
    pad = round(margin * max(h, w))
    return max(0, y - pad), min(h, y + bh + pad), max(0, x - pad), min(w, x + bw + pad)


def clahe(image: np.ndarray, clip_limit: float = 3.0, tile_grid: int = 8) -> np.ndarray:
    """Contrast Limited Adaptive Histogram Equalization (seed 5.1.7)."""
    return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tile_grid, tile_grid)).apply(image)


def laplacian_sharpen(image: np.ndarray) -> np.ndarray:
    """Image minus its Laplacian, clipped to 0..255: accentuates bone edges and growth plates (seed 5.1.8)."""
    lap = cv2.Laplacian(image, cv2.CV_16S, ksize=1)
    return np.clip(image.astype(np.int16) - lap, 0, 255).astype(np.uint8)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre on a black square so resizing does not distort the hand's proportions."""
    h, w = image.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(image, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)


def resize_square(image: np.ndarray, size: int = 384) -> np.ndarray:
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def percentile_stretch(image: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """The grey levels of the masked pixels between two percentiles, stretched linearly to 0..255."""
    if not cv2.countNonZero(mask):
        return image
    lo, hi = grey_percentiles(image, mask, percentiles)
    if hi - lo < 1:
        return image
    lut = np.clip((np.arange(256, dtype=np.float32) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    return cv2.LUT(image, lut)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1], the model's input scale."""
    return image.astype(np.float32) * (1.0 / 255.0)


# --- the steps ------------------------------------------------------------------------------


@dataclass
class Film:
    """One film on its way through the steps; each step reads and replaces what it needs."""

    image: np.ndarray  # the working image: the film, then the hand's box, then the model's input
    config: PreprocessConfig
    findings: dict[str, str] = field(default_factory=dict)
    seen: filmcheck.Finding | None = None  # what the film check saw
    film_shape: tuple[int, ...] = ()  # the film's, after the check turned it back
    small: np.ndarray | None = None  # the image at segment_size, for the contrast check and the segmenter
    contrast: float = 0.0
    hand_fraction: float = 1.0
    hand: np.ndarray | None = None  # the hand mask (0/255) on the uncropped image; then filled, dilated
    mask: np.ndarray | None = None  # the hand mask on the working image


def film_check(film: Film) -> None:
    """The film check (:mod:`boneage.prepare.filmcheck`) on the whole film: refuse what is not a hand, turn a
    mirrored or rotated hand back to a left hand with fingers up (and say so)."""
    film.seen = seen = filmcheck.get_filmcheck().findings(to_domain(film.image, filmcheck.INPUT_SIZE)[None])[0]
    if seen.not_a_hand:
        film.findings["not_a_hand"] = seen.detail
    elif seen.orientation:
        film.image = filmcheck.unorient(film.image, seen.orientation)
        sure = f"(check {seen.p_orientation:.0%} sure)"
        if filmcheck.is_mirrored(seen.orientation):
            film.findings["flipped_or_right_hand"] = f"a mirrored film or a right hand: mirrored back to a left hand {sure}"
        if filmcheck.is_turned(seen.orientation):
            film.findings["rotated"] = (f"the film was turned {90 * (seen.orientation % 4)} degrees: turned back "
                                        f"fingers up {sure}")


def domain(film: Film) -> None:
    film.film_shape = film.film_shape or film.image.shape
    film.image = to_domain(film.image, film.config.domain_size)


def contrast(film: Film) -> None:
    """A warning only: dim films are often readable (the U-Net stretches them)."""
    film.small = resize_long_side(film.image, film.config.segment_size)
    film.contrast = contrast_score(film.small)
    if film.contrast < film.config.min_contrast:
        film.findings["low_contrast"] = f"contrast score {film.contrast:.3f} below {film.config.min_contrast}"


def segment(film: Film) -> None:
    """The segmenter's mask at ``segment_size``; without segmentation, the whole film."""
    config = film.config
    if not config.segment:
        film.hand = np.full(film.image.shape, 255, np.uint8)
        return
    segmenter = get_segmenter(config.segmenter)
    options = {}  # the U-Net's own options, passed only when set: a plain segmenter takes the image alone
    if config.segment_work_size:
        options["work_size"] = config.segment_work_size
    if not config.segment_patches:
        options["patches"] = False
    film.hand = segmenter(film.small, **options)


def fill(film: Film) -> None:
    """Holes inside the hand closed; a mask that covers too little or too much of the film is no hand."""
    config = film.config
    film.hand = fill_contours(film.hand)
    film.hand_fraction = float(np.count_nonzero(film.hand)) / film.hand.size
    if not config.min_hand_fraction <= film.hand_fraction <= config.max_hand_fraction:
        film.findings["no_hand_found"] = (f"hand mask covers {film.hand_fraction:.0%} of the image, outside "
                                          f"{config.min_hand_fraction:.0%}-{config.max_hand_fraction:.0%}")


def dilate(film: Film) -> None:
    """The mask upsampled to the image and grown; the whole film where no hand was found (rather than a
    wrong piece of it)."""
    h, w = film.image.shape
    if "no_hand_found" in film.findings:
        film.hand = np.full((h, w), 255, np.uint8)
        return
    small = film.hand
    up = small if small.shape == (h, w) else cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    film.hand = dilate_mask(np.where(up > 127, 255, 0).astype(np.uint8), film.config.dilation_kernel)


def overlay(film: Film) -> None:
    film.image = apply_mask(film.image, film.hand)


def crop(film: Film) -> None:
    """The hand's box, at ``enhance_size`` at most (CLAHE and sharpening then cost milliseconds)."""
    y0, y1, x0, x1 = hand_box(film.hand, film.config.crop_margin)
    work, mask = film.image[y0:y1, x0:x1], film.hand[y0:y1, x0:x1]
    if film.config.enhance_size:
        work = resize_long_side(work, film.config.enhance_size)
        mask = cv2.resize(mask, (work.shape[1], work.shape[0]), interpolation=cv2.INTER_NEAREST)
    film.image, film.mask = work, mask


def normalise(film: Film) -> None:
    film.image = percentile_stretch(film.image, film.mask, film.config.normalise_percentiles)


def clahe_step(film: Film) -> None:
    film.image = clahe(film.image, film.config.clahe_clip_limit, film.config.clahe_tile_grid)


def sharpen(film: Film) -> None:
    film.image = laplacian_sharpen(film.image)


def remask(film: Film) -> None:
    """CLAHE lifts the black background a little and sharpening rings at the mask edge: mask again so
    nothing outside the hand reaches the model."""
    film.image = apply_mask(film.image, film.mask)


def resize(film: Film) -> None:
    image = pad_to_square(film.image) if film.config.fit == "pad" else film.image
    film.image = np.ascontiguousarray(resize_square(image, film.config.output_size))


@dataclass(frozen=True)
class Step:
    """A named step of :data:`boneage.prepare.config.PIPELINE`: ``run(film)`` where the config lists it."""

    name: str
    run: Callable[[Film], None]

    def runs(self, config: PreprocessConfig) -> bool:
        return self.name in config.steps


# What each step of the pipeline does, in its order. A benchmark times each by wrapping ``run``
# (benchmarks/preprocess_stages.py); adding a step: docs/howto/add-preprocessing-step.md.
STEPS: list[Step] = [Step(name, run) for name, run in (
    ("film_check", film_check), ("domain", domain), ("contrast", contrast), ("segment", segment), ("fill", fill),
    ("dilate", dilate), ("overlay", overlay), ("crop", crop), ("normalise", normalise), ("clahe", clahe_step),
    ("sharpen", sharpen), ("remask", remask), ("resize", resize))]
MASK_STEPS = ("contrast", "segment", "fill", "dilate")


def run_steps(film: Film, steps: Sequence[Step] | None = None, names: Sequence[str] | None = None) -> Film:
    """Run ``steps`` (default :data:`STEPS`; only those in ``names`` when given) that the film's config asks for."""
    wanted = [name for name in film.config.steps if names is None or name in names]
    for step in STEPS if steps is None else steps:
        if step.name in wanted:
            step.run(film)
    return film


@dataclass
class HandMask:
    """Full-resolution 0/255 mask (filled and dilated) with the quality measures found on the way."""

    mask: np.ndarray
    contrast: float
    hand_fraction: float
    findings: dict[str, str]


def hand_mask(image: np.ndarray, config: PreprocessConfig) -> HandMask:
    """Quality check and hand mask alone: segment at ``segment_size``, fill, upsample, dilate at full size."""
    film = run_steps(Film(image, config), names=MASK_STEPS)
    return HandMask(film.hand, film.contrast, film.hand_fraction, film.findings)


def preprocess(image: np.ndarray, config: PreprocessConfig | None = None,
               steps: Sequence[Step] | None = None) -> PreprocessResult:
    """Run every step on one HxW uint8 radiograph (bone bright). ``steps``: :data:`STEPS`, or a wrapped copy
    of them (a benchmark's timers)."""
    config = config or PreprocessConfig()
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"preprocess expects a 2-D uint8 grey image, got {image.dtype} {image.shape}")
    film = run_steps(Film(image, config), steps)
    seen = film.seen
    return PreprocessResult(
        image=film.image,
        contrast=film.contrast,
        hand_fraction=film.hand_fraction,
        findings=film.findings,
        config_hash=config.config_hash(),
        p_hand=None if seen is None else seen.p_hand,
        hand_distance=None if seen is None else seen.distance,
        texture_distance=None if seen is None else seen.texture_distance,
        orientation=0 if seen is None or seen.not_a_hand else seen.orientation,
        hand_aspect=display_aspect(film.hand, film.film_shape or film.hand.shape, config),
    )


def display_aspect(mask: np.ndarray, film_shape: tuple[int, ...], config: PreprocessConfig) -> float:
    """Width / height at which the model's input shows the hand as it is on the film. ``mask`` is on the image
    the box was cut from (the film, or the film squashed to ``domain_size``)."""
    y0, y1, x0, x1 = hand_box(mask, config.crop_margin)
    cut = (x1 - x0) / max(y1 - y0, 1)  # the box as cut
    on_film = cut * (film_shape[1] / mask.shape[1]) / (film_shape[0] / mask.shape[0])
    return on_film if config.fit == "stretch" else on_film / cut  # "pad" keeps the box as cut, in a square
