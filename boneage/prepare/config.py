"""The preprocessing configuration: every parameter of the steps (:mod:`boneage.prepare.stages`), saved
inside each checkpoint and each cache, with its schema version and one :func:`migrate` for older saved forms.

Its hash (:func:`config_hash`) ties a cache to the checkpoint it feeds. Schema 1 (the fields up to
``normalise_percentiles``) hashes as it always did, so caches and checkpoints made before schema 2 still
match. Anything added since enters the hash only where it changes the pipeline: a field added later at a
value other than its default, and the content of a model file that changes the image (the film check,
the U-Net) other than the one shipped when the hash began to include it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields

from boneage.configs import check_known_keys
from boneage.prepare import filmcheck
from boneage.prepare.segmentation import weights_uri

SCHEMA_VERSION = 2


@dataclass(frozen=True)
class PreprocessConfig:
    """Every parameter of the image pipeline; saved inside each checkpoint and each cache shard."""

    # Bring the whole film into the training domain first: nearest-neighbour squash to
    # domain_size x domain_size, aspect not kept (how rsna-100px was made). None: use the film as it is.
    domain_size: int | None = None
    segment: bool = True  # False: no hand mask and no crop (the whole film, masked by nothing)
    segmenter: str = "unet"
    segment_work_size: int | None = None  # U-Net only: run it at this long side instead of its trained one
    # U-Net only: True, on overlapping patches of its trained size (as it was trained); False, on the whole
    # image in one pass (it is fully convolutional): at 256 px 23 -> 14 ms a film on one core, masks of the
    # 202 full-size rsna films at a median IoU of 0.996 with the patches' (benchmarks/segment_whole.py).
    segment_patches: bool = True
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
    # The saved form's version; older saved forms are brought up to date by migrate().
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalise_percentiles", tuple(self.normalise_percentiles))  # JSON: a list
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version}: migrate() the saved config to {SCHEMA_VERSION}")
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
        if (self.segment_work_size or not self.segment_patches) and not self.segmenter.startswith("unet"):
            raise ValueError("segment_work_size and segment_patches apply to the U-Net only, "
                             f"not to the {self.segmenter!r} segmenter")

    @property
    def decode_min_side(self) -> int | None:
        """The shortest side this pipeline needs from the decoder; None: the full film. With a domain the
        whole film is sampled down to ``domain_size`` (and the film check's 100 px), so with
        ``reduced_decode`` a JPEG is decoded at 1/2 to 1/8 scale: at twice the sampled size every
        sampled pixel still comes from the film, averaged over a few source pixels instead of one."""
        if not (self.reduced_decode and self.domain_size):
            return None
        return 2 * max(self.domain_size, filmcheck.INPUT_SIZE if self.film_check else 0)

    @property
    def steps(self) -> list[str]:
        """The named steps (:data:`PIPELINE`; run by :mod:`boneage.prepare.stages`) this config runs, in order."""
        return [name for name, runs in PIPELINE if runs(self)]

    def model_files(self) -> dict[str, str]:
        """Content hash (sha256) of each model file that changes the image: the film check's and the U-Net's."""
        files = {"film_check": filmcheck.SHIPPED_FILMCHECK if self.film_check else None,
                 "segmenter": weights_uri(self.segmenter) if self.segment else None}
        return {step: file_digest(str(uri)) for step, uri in files.items() if uri is not None}

    def to_dict(self) -> dict:
        """The saved form: every field, ``schema_version`` and (a record for readers; derived on load) the
        steps that run."""
        return {**asdict(self), "steps": self.steps}

    @classmethod
    def from_dict(cls, data: Mapping) -> PreprocessConfig:
        """A saved config of any schema version (:func:`migrate` brings it to this one)."""
        data = migrate(data)
        check_known_keys(cls, data, "preprocessing config")
        return cls(**data)

    @classmethod
    def named(cls, spec: str) -> PreprocessConfig:
        """A preset name (see ``PRESETS``) or the URI of a JSON file of fields."""
        if spec in PRESETS:
            return PRESETS[spec]
        from boneage.files import storage

        return cls.from_dict(json.loads(storage.read_bytes(spec)))

    def config_hash(self) -> str:
        """Short stable id: a cache built with one config is never mistaken for another's (see :func:`config_hash`)."""
        return config_hash(self)


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
    # The U-Net sees the whole 256 px image in one pass (segment_patches=False): 14 ms instead of 22, masks
    # at a median IoU of 0.996 with the patches' (docs/pipeline.md); the shipped model was trained so.
    "hires": PreprocessConfig(segment_work_size=None, segment_patches=False, dilation_kernel=11, clahe=False,
                              sharpen=False, enhance_size=None, output_size=256, fit="stretch",
                              normalise="percentile"),
}


# The pipeline's steps in order (seed, section 5.1, after the film check), and when each runs. The saved
# config records which ran; boneage.prepare.stages.STEPS holds what each does, in the same order.
PIPELINE: tuple[tuple[str, Callable[[PreprocessConfig], bool]], ...] = (
    ("film_check", lambda c: c.film_check),
    ("domain", lambda c: bool(c.domain_size)),
    ("contrast", lambda c: True),
    ("segment", lambda c: True),  # without segmentation: the whole film is the mask
    ("fill", lambda c: c.segment),
    ("dilate", lambda c: c.segment),
    ("overlay", lambda c: True),
    ("crop", lambda c: True),
    ("normalise", lambda c: c.normalise == "percentile"),
    ("clahe", lambda c: c.clahe),
    ("sharpen", lambda c: c.sharpen),
    ("remask", lambda c: True),
    ("resize", lambda c: True),
)


def migrate(data: Mapping) -> dict:
    """A saved config of any schema version, as this version's fields. Schema 1 had no ``schema_version``
    (and JSON turned its tuple into a list); ``steps`` is a record derived from the fields, never read."""
    data = {k: v for k, v in data.items() if k != "steps"}
    version = data.pop("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise ValueError(f"preprocessing config of schema {version}, newer than this version's {SCHEMA_VERSION}")
    if "normalise_percentiles" in data:  # JSON has no tuples
        data["normalise_percentiles"] = tuple(data["normalise_percentiles"])
    return data


# --- the hash ---------------------------------------------------------------------------------------

# Schema 1's fields, and the rule it hashed them by (frozen: never extended, see config_hash).
_SCHEMA_1 = ("domain_size", "segment", "segmenter", "segment_work_size", "segment_size", "min_contrast",
             "min_hand_fraction", "max_hand_fraction", "dilation_kernel", "clahe", "clahe_clip_limit",
             "clahe_tile_grid", "sharpen", "crop_margin", "enhance_size", "output_size", "fit", "film_check",
             "reduced_decode", "normalise", "normalise_percentiles")
_V1_ADDED = {"domain_size": None, "segment": True, "segment_work_size": None, "clahe": True, "fit": "pad"}
_V1_LATER = {"film_check": True, "reduced_decode": False, "normalise": "none", "normalise_percentiles": [1.0, 99.0]}
# The model files' content when the hash began to include it (boneage/models/filmcheck.pt, unet_hand.pt).
_V1_MODEL_FILES = {"film_check": "95b2520bd5170c8b6b03bcac5379c5ea18a99b8c6b280d8fc6130ff184daf320",
                   "segmenter": "032fd6b5a42ac5d293d296621468d19cd18b11a18054e368133c21ba21f21660"}


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _schema_1_hash(config: PreprocessConfig) -> str:
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items() if k in _SCHEMA_1}
    data = {k: v for k, v in data.items() if not (k in _V1_LATER and v == _V1_LATER[k])}
    if all(data[k] == v for k, v in _V1_ADDED.items()):
        data = {k: v for k, v in data.items() if k not in _V1_ADDED}
    return _digest(data)


@functools.cache
def config_hash(config: PreprocessConfig) -> str:
    """Schema 1's hash, extended (only where there is something to add) by the fields added since at a value
    other than their default, and by model files whose content is not the one shipped in schema 1. A new
    field or step at its default leaves every hash as it was: no table to keep."""
    later = {f.name: getattr(config, f.name) for f in fields(config)
             if f.name not in _SCHEMA_1 and f.name != "schema_version" and getattr(config, f.name) != f.default}
    files = {k: v for k, v in config.model_files().items() if _V1_MODEL_FILES.get(k) != v}
    base = _schema_1_hash(config)
    if not later and not files:
        return base
    return _digest({"schema_1": base, "fields": later, "model_files": files})


def clear_cache() -> None:
    """Forget the hashes and file digests computed so far (a test that swaps a model file)."""
    config_hash.cache_clear()
    file_digest.cache_clear()


@functools.cache
def file_digest(uri: str) -> str:
    """sha256 of a file's bytes, read once per process."""
    from boneage.files import storage

    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
