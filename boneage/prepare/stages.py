"""The seed's image pipeline as small pure stages, composed by one saved configuration.

Training, bulk scoring and serving all call :func:`preprocess` with the ``PreprocessConfig`` stored
in the checkpoint, so the model always sees images prepared exactly as in training.

Order (seed, section 5.1, after the film check of :mod:`boneage.prepare.filmcheck`): low-contrast check -> hand mask -> contour fill -> 11x11 dilation ->
overlay -> crop to the hand -> CLAHE (clip 3.0, 8x8) -> Laplacian sharpening -> pad to square ->
resize 384. With ``domain_size`` the film is first squashed to the training domain (see
:func:`to_domain`), where the other stages are sized to the small image. The mask is computed at ``segment_size`` and applied at full resolution; CLAHE and
sharpening run at ``enhance_size`` so a 5 Mpx film costs milliseconds, and the sharpening acts at
a scale that survives the final resize.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from boneage.configs import check_known_keys
from boneage.prepare import filmcheck
from boneage.prepare.segmentation import get_segmenter
from boneage.prepare.verdict import Verdict, quality_fields, status

# Fields added with the rsna100 preset, at the values that keep the seed's pipeline unchanged.
_ADDED_DEFAULTS = {"domain_size": None, "segment": True, "segment_work_size": None, "clahe": True, "fit": "pad"}
# Fields added later, each left out of the hash at its default (every config hashes as before them).
_LATER_DEFAULTS = {"film_check": True, "reduced_decode": False, "normalise": "none", "normalise_percentiles": (1.0, 99.0)}


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter of the image pipeline; saved inside each checkpoint and each cache shard."""

    # Bring the whole film into the training domain first: nearest-neighbour squash to
    # domain_size x domain_size, aspect not kept (how rsna-100px was made). None: use the film as it is.
    domain_size: int | None = None
    segment: bool = True  # False: no hand mask and no crop (the whole film, masked by nothing)
    segmenter: str = "unet"
    segment_work_size: int | None = None  # U-Net only: run it at this long side instead of its trained one
    segment_size: int = 512
    min_contrast: float = 0.10
    min_hand_fraction: float = 0.10
    max_hand_fraction: float = 0.90
    dilation_kernel: int = 11
    clahe: bool = True
    clahe_clip_limit: float = 3.0
    clahe_tile_grid: int = 8
    sharpen: bool = True
    crop_margin: float = 0.02
    enhance_size: int | None = 768
    output_size: int = 384
    # "pad": centre the hand's box on a black square (keeps its proportions); "stretch": resize the
    # box to the square, so every hand fills the frame the same way whatever the film's aspect.
    fit: str = "pad"
    # First look at the whole film (boneage.prepare.filmcheck): refuse what is not a hand, turn a mirrored or
    # rotated hand back to a left hand, fingers up (and say so).
    film_check: bool = True
    # With a domain: decode a JPEG at 1/2-1/8 scale when it keeps twice the domain's side (libjpeg's DCT
    # scaling). Off by default: the rsna100 domain samples single pixels, and averaged ones moved the
    # shipped model's estimates by a median 2.4 months (README "Benchmark").
    reduced_decode: bool = False
    # Exposure within the hand, after the crop: "none", or "percentile": the hand's grey levels between
    # these percentiles (mask pixels only) stretched to 0..255, so a washed-out or dark film reaches the
    # model with the same range as a well-exposed one (the full-size rsna/val films vary widely).
    normalise: str = "none"
    normalise_percentiles: tuple[float, float] = (1.0, 99.0)

    def __post_init__(self) -> None:
        if not 0 <= self.min_hand_fraction < self.max_hand_fraction <= 1:
            raise ValueError("need 0 <= min_hand_fraction < max_hand_fraction <= 1")
        if self.dilation_kernel < 1 or self.dilation_kernel % 2 == 0:
            raise ValueError(f"dilation_kernel must be a positive odd number, not {self.dilation_kernel}")
        sizes = (self.segment_size, self.output_size, self.enhance_size or 1, self.domain_size or 1,
                 self.segment_work_size or 1, self.clahe_tile_grid)
        if min(sizes) < 1:
            raise ValueError("sizes must be positive")
        if self.fit not in ("pad", "stretch"):
            raise ValueError(f"fit must be 'pad' or 'stretch', not {self.fit!r}")
        if self.normalise not in ("none", "percentile"):
            raise ValueError(f"normalise must be 'none' or 'percentile', not {self.normalise!r}")
        lo, hi = self.normalise_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"normalise_percentiles must be 0 <= low < high <= 100, not {self.normalise_percentiles}")
        if self.reduced_decode and not self.domain_size:
            raise ValueError("reduced_decode needs a domain_size (the film is sampled down to it)")
        if self.segment_work_size and not self.segmenter.startswith("unet"):
            raise ValueError(f"segment_work_size applies to the U-Net only, not to the {self.segmenter!r} segmenter")

    @property
    def decode_min_side(self) -> int | None:
        """The shortest side this pipeline needs from the decoder; None: the full film. With a domain the
        whole film is sampled down to ``domain_size`` (and the film check's 100 px), so with
        ``reduced_decode`` a JPEG is decoded at 1/2 to 1/8 scale: at twice the sampled size every
        sampled pixel still comes from the film, averaged over a few source pixels instead of one."""
        if not (self.reduced_decode and self.domain_size):
            return None
        return 2 * max(self.domain_size, filmcheck.INPUT_SIZE if self.film_check else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        check_known_keys(cls, data, "preprocessing config")
        data = dict(data)
        if "normalise_percentiles" in data:  # JSON has no tuples
            data["normalise_percentiles"] = tuple(data["normalise_percentiles"])
        return cls(**data)

    @classmethod
    def named(cls, spec: str) -> PreprocessConfig:
        """A preset name (see ``PRESETS``) or the URI of a JSON file of fields."""
        if spec in PRESETS:
            return PRESETS[spec]
        from boneage.files import storage

        return cls.from_dict(json.loads(storage.read_bytes(spec)))

    def config_hash(self) -> str:
        """Short stable id: a cache built with one config is never mistaken for another's. A config that
        leaves every field added since format 1 at its default hashes as it did before they existed, so
        older caches and checkpoints still match each other."""
        data = {k: v for k, v in self.to_dict().items() if not (k in _LATER_DEFAULTS and v == _LATER_DEFAULTS[k])}
        data = {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}
        if all(data[k] == v for k, v in _ADDED_DEFAULTS.items()):
            data = {k: v for k, v in data.items() if k not in _ADDED_DEFAULTS}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


# "seed": the seed's pipeline for full-size films. "rsna100": the shipped model's. Every film is squashed
# to the rsna-100px domain (the only full training set here), the hand found there and its box stretched
# to 112 x 112: framing and aspect no longer depend on how the film was cropped. Stage sizes suit the
# 100 px image (3 px dilation, U-Net at 128 px). No CLAHE and no sharpening: on 100 px images they did
# not help (scripts/shipped_model/ablation.py; README "How the preprocessing was chosen").
PRESETS: dict[str, PreprocessConfig] = {
    "seed": PreprocessConfig(),
    "rsna100": PreprocessConfig(domain_size=100, segment_work_size=128, dilation_kernel=3, clahe=False,
                                sharpen=False, enhance_size=None, output_size=112, fit="stretch"),
    # "hires": the film as it is (full size, rsna-half, or for training a rsna-100px file), hand found by
    # the U-Net at its trained 256 px, box stretched to 256 x 256 like rsna100's (so a model fine-tuned
    # from the 100 px one sees hands framed as it learnt them), the hand's grey levels stretched
    # between its 1st and 99th percentiles. README "The high-resolution preset" gives the measurements.
    "hires": PreprocessConfig(segment_work_size=None, dilation_kernel=11, clahe=False, sharpen=False,
                              enhance_size=None, output_size=256, fit="stretch", normalise="percentile"),
}


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


# --- composition ----------------------------------------------------------------------------


@contextmanager
def _timed(timings: dict[str, float] | None, stage: str):
    if timings is None:
        yield
        return
    start = time.perf_counter()
    yield
    timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0


@dataclass
class HandMask:
    """Full-resolution 0/255 mask (filled and dilated) with the quality measures found on the way."""

    mask: np.ndarray
    contrast: float
    hand_fraction: float
    findings: dict[str, str]


def hand_mask(image: np.ndarray, config: PreprocessConfig, timings: dict[str, float] | None = None) -> HandMask:
    """Quality check and hand mask: segment at ``segment_size``, fill, upsample, dilate at full size."""
    h, w = image.shape
    findings = {}
    with _timed(timings, "contrast"):
        small = resize_long_side(image, config.segment_size)
        score = contrast_score(small)
    if score < config.min_contrast:  # a warning: dim films are often readable (the U-Net stretches them)
        findings["low_contrast"] = f"contrast score {score:.3f} below {config.min_contrast}"
    if not config.segment:  # the whole film: only the contrast check applies
        return HandMask(np.full((h, w), 255, np.uint8), score, 1.0, findings)
    with _timed(timings, "segment"):
        segmenter = get_segmenter(config.segmenter)
        raw_mask = segmenter(small, work_size=config.segment_work_size) if config.segment_work_size else segmenter(small)
    with _timed(timings, "fill"):
        small_mask = fill_contours(raw_mask)
        hand_fraction = float(np.count_nonzero(small_mask)) / small_mask.size

    if not config.min_hand_fraction <= hand_fraction <= config.max_hand_fraction:
        findings["no_hand_found"] = (f"hand mask covers {hand_fraction:.0%} of the image, outside "
                                     f"{config.min_hand_fraction:.0%}-{config.max_hand_fraction:.0%}")
    with _timed(timings, "dilate"):
        if "no_hand_found" in findings:  # keep the whole film rather than a wrong piece of it
            mask = np.full((h, w), 255, np.uint8)
        else:
            up = small_mask if small_mask.shape == (h, w) else cv2.resize(small_mask, (w, h), interpolation=cv2.INTER_LINEAR)
            mask = dilate_mask(np.where(up > 127, 255, 0).astype(np.uint8), config.dilation_kernel)
    return HandMask(mask, score, hand_fraction, findings)


def check_film(image: np.ndarray) -> tuple[np.ndarray, dict[str, str], filmcheck.Finding]:
    """The film check (:mod:`boneage.prepare.filmcheck`) on the whole film: (the film, turned back to a left hand
    with fingers up when it was found mirrored or rotated; its findings; what the check saw)."""
    seen = filmcheck.get_filmcheck().findings(to_domain(image, filmcheck.INPUT_SIZE)[None])[0]
    findings = {}
    if seen.not_a_hand:
        findings["not_a_hand"] = seen.detail
    elif seen.orientation:
        image = filmcheck.unorient(image, seen.orientation)
        sure = f"(check {seen.p_orientation:.0%} sure)"
        if filmcheck.is_mirrored(seen.orientation):
            findings["flipped_or_right_hand"] = f"a mirrored film or a right hand: mirrored back to a left hand {sure}"
        if filmcheck.is_turned(seen.orientation):
            findings["rotated"] = (f"the film was turned {90 * (seen.orientation % 4)} degrees: turned back "
                                   f"fingers up {sure}")
    return image, findings, seen


def enhance(image: np.ndarray, mask: np.ndarray, config: PreprocessConfig,
            timings: dict[str, float] | None = None) -> np.ndarray:
    """Overlay, crop, CLAHE, sharpening, square pad and resize: the model's input, uint8."""
    with _timed(timings, "overlay"):
        work = apply_mask(image, mask)
    with _timed(timings, "crop"):
        y0, y1, x0, x1 = hand_box(mask, config.crop_margin)
        work, mask = work[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        if config.enhance_size:
            work = resize_long_side(work, config.enhance_size)
            mask = cv2.resize(mask, (work.shape[1], work.shape[0]), interpolation=cv2.INTER_NEAREST)
    with _timed(timings, "normalise"):
        if config.normalise == "percentile":
            work = percentile_stretch(work, mask, config.normalise_percentiles)
    with _timed(timings, "clahe"):
        if config.clahe:
            work = clahe(work, config.clahe_clip_limit, config.clahe_tile_grid)
    with _timed(timings, "sharpen"):
        if config.sharpen:
            work = laplacian_sharpen(work)
        # CLAHE lifts the black background a little and sharpening rings at the mask edge:
        # mask again so nothing outside the hand reaches the model.
        work = apply_mask(work, mask)
    with _timed(timings, "resize"):
        return np.ascontiguousarray(resize_square(pad_to_square(work) if config.fit == "pad" else work,
                                                  config.output_size))


def preprocess(
    image: np.ndarray, config: PreprocessConfig | None = None, timings: dict[str, float] | None = None
) -> PreprocessResult:
    """Run every stage on one HxW uint8 radiograph (bone bright).

    ``timings``, when given, receives the milliseconds spent in each stage (for the benchmark).
    """
    config = config or PreprocessConfig()
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"preprocess expects a 2-D uint8 grey image, got {image.dtype} {image.shape}")
    findings, seen = {}, None
    if config.film_check:
        with _timed(timings, "film_check"):
            image, findings, seen = check_film(image)
    film_shape = image.shape
    if config.domain_size:
        with _timed(timings, "domain"):
            image = to_domain(image, config.domain_size)
    found = hand_mask(image, config, timings)
    return PreprocessResult(
        image=enhance(image, found.mask, config, timings),
        contrast=found.contrast,
        hand_fraction=found.hand_fraction,
        findings={**findings, **found.findings},
        config_hash=config.config_hash(),
        p_hand=None if seen is None else seen.p_hand,
        hand_distance=None if seen is None else seen.distance,
        texture_distance=None if seen is None else seen.texture_distance,
        orientation=0 if seen is None or seen.not_a_hand else seen.orientation,
        hand_aspect=display_aspect(found.mask, film_shape, config),
    )


def display_aspect(mask: np.ndarray, film_shape: tuple[int, ...], config: PreprocessConfig) -> float:
    """Width / height at which the model's input shows the hand as it is on the film. ``mask`` is on the image
    the box was cut from (the film, or the film squashed to ``domain_size``)."""
    y0, y1, x0, x1 = hand_box(mask, config.crop_margin)
    cut = (x1 - x0) / max(y1 - y0, 1)  # the box as cut
    on_film = cut * (film_shape[1] / mask.shape[1]) / (film_shape[0] / mask.shape[0])
    return on_film if config.fit == "stretch" else on_film / cut  # "pad" keeps the box as cut, in a square
