"""The one prediction path: the CLI, bulk scoring and the endpoint all go through ``Predictor``.

A ``Predictor`` owns a loaded checkpoint; it preprocesses with the checkpoint's own config and
predicts batches on CPU or GPU. A film is prepared (:class:`~boneage.predict.result.PreparedFilm`), then
scored into its immutable :class:`~boneage.predict.result.Prediction`. Per-file failures become
``Prediction.error``, never exceptions, so one corrupt file does not stop the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from boneage.clinical.intervals import Calibration, Variant, tta_variants
from boneage.clinical.reference import Reference, load_reference
from boneage.devices import bf16_fast, select_device
from boneage.errors import BoneAgeError, CheckpointError, ImageReadError
from boneage.files.images import Radiograph, parse_sex, read_image
from boneage.files.storage import file_id
from boneage.network.checkpoint import Checkpoint, load_checkpoint
from boneage.network.model import ModelConfig, build_model
from boneage.predict.result import ErrorCode, Prediction, PreparedFilm, Quality
from boneage.prepare.stages import PreprocessConfig, PreprocessResult, preprocess, to_unit_float
from boneage.prepare.verdict import age_out_of_range

log = logging.getLogger(__name__)
MODEL_ENV = "BONEAGE_MODEL"
# The models shipped in the package, by name (README "The shipped models"): ``hires`` (256 px, fine-tuned on
# half-resolution RSNA films) is the default; ``rsna100`` (films squashed to 100 px) is the fast option. Either
# file may be left out of a package; ``--model untrained`` asks for a random network instead.
MODELS_DIR = Path(__file__).parent.parent / "models"
SHIPPED_MODELS = {"hires": MODELS_DIR / "boneage_hires.pt", "rsna100": MODELS_DIR / "boneage_rsna100.pt"}
SHIPPED_MODEL = SHIPPED_MODELS["hires"]
UNTRAINED = "untrained"
UNTRAINED_WARNING = (
    "UNTRAINED MODEL: a randomly initialised network is used (--model untrained, or no trained "
    "checkpoint is installed). Its bone ages are meaningless; use them only to try the pipeline."
)


def default_model_uri() -> str:
    """``$BONEAGE_MODEL``, else the first shipped model installed (``hires``, then ``rsna100``), else
    ``"untrained"``."""
    installed = [name for name, path in SHIPPED_MODELS.items() if path.exists()]
    return os.environ.get(MODEL_ENV) or (installed[0] if installed else UNTRAINED)


def resolve_model(uri: str) -> str:
    """A shipped model's name (``hires``, ``rsna100``) -> its file; any other URI unchanged."""
    if uri not in SHIPPED_MODELS:
        return uri
    if not SHIPPED_MODELS[uri].exists():
        raise CheckpointError(f"the shipped model {uri!r} is not installed in this package "
                              f"({SHIPPED_MODELS[uri]}); installed: "
                              f"{', '.join(n for n, p in SHIPPED_MODELS.items() if p.exists()) or 'none'}")
    return str(SHIPPED_MODELS[uri])


def years_months(months: float) -> str:
    """124.4 -> "10 y 4 m": how radiologists write bone age."""
    total = int(round(months))
    sign = "-" if total < 0 else ""
    years, rest = divmod(abs(total), 12)
    return f"{sign}{years} y {rest} m"


def untrained_checkpoint(model_config: ModelConfig | None = None, preprocess_config: PreprocessConfig | None = None,
                         seed: int = 0) -> Checkpoint:
    """A deterministic random-init network: lets the whole pipeline run before any training."""
    torch.manual_seed(seed)
    model = build_model(model_config or ModelConfig())
    model.eval()
    return Checkpoint(model=model, preprocess=preprocess_config or PreprocessConfig(),
                      metadata={"trained": False, "seed": seed}, version=f"untrained-seed{seed}")


class Predictor:
    """Load once, predict many. Thread-compatible for reading; not meant to be shared across processes."""

    def __init__(self, checkpoint: Checkpoint, device: str | None = None, batch_size: int = 16,
                 tta: int | None = None, reference: Reference | str | None = None, score_anyway: bool = False):
        """``tta``: test-time variants per image; None follows the checkpoint's calibration (none
        without one), 0 or 1 turns TTA off. ``reference``: bone-age SDs by age and sex (a
        :class:`~boneage.clinical.reference.Reference` or a CSV URI; default: ``$BONEAGE_REFERENCE``, else
        the shipped Greulich-Pyle table). bf16 autocast is on where it is fast
        (:func:`~boneage.devices.bf16_fast`; predictions then differ from float32 by a fraction of a month);
        set :attr:`bf16` after construction to choose. ``score_anyway``: give a bone age for refused films
        too (not a hand, no hand found), beside the refusal; by default it is withheld
        (:mod:`boneage.prepare.verdict`)."""
        self.checkpoint = checkpoint
        self.device = select_device(device)
        self.batch_size = batch_size
        self.model = checkpoint.model.to(self.device).eval()
        self.model = self.model.to(memory_format=torch.channels_last)
        self.bf16 = bf16_fast(self.device)
        self.calibration = Calibration.from_dict(checkpoint.metadata.get("calibration"))
        self.tta = tta if tta is not None else (self.calibration.tta if self.calibration else 0)
        self.reference = reference if isinstance(reference, Reference) else load_reference(reference)
        self.score_anyway = score_anyway
        self._warned_tta = False
        if not checkpoint.trained:
            log.warning(UNTRAINED_WARNING)

    @classmethod
    def load(cls, uri: str | None = None, device: str | None = None, batch_size: int = 16,
             tta: int | None = None, reference: str | None = None, score_anyway: bool = False) -> Predictor:
        """From ``uri`` (a file, or a shipped model's name), else ``$BONEAGE_MODEL``, else the shipped
        default; ``"untrained"`` gives a random network (with a loud warning)."""
        uri = resolve_model(uri or default_model_uri())
        checkpoint = untrained_checkpoint() if uri == UNTRAINED else load_checkpoint(uri)
        return cls(checkpoint, device=device, batch_size=batch_size, tta=tta, reference=reference,
                   score_anyway=score_anyway)

    @property
    def version(self) -> str:
        return self.checkpoint.version

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return self.checkpoint.preprocess

    def preprocess(self, pixels: np.ndarray) -> PreprocessResult:
        return preprocess(pixels, self.checkpoint.preprocess)

    @torch.inference_mode()
    def predict_arrays(self, images: np.ndarray | Sequence[np.ndarray], male: Sequence[float],
                       on_batch: Callable[[int], object] | None = None) -> np.ndarray:
        """Bone ages (months) for preprocessed uint8 images (N x S x S) and sex (1 male, 0 female).
        ``on_batch(n)`` after each batch of ``n`` images (a progress bar's ``update``)."""
        return self._predict_variants(images, male, [Variant()], on_batch)[0]

    @torch.inference_mode()
    def predict_arrays_tta(self, images: np.ndarray | Sequence[np.ndarray], male: Sequence[float],
                           n: int | None = None,
                           on_batch: Callable[[int], object] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(bone ages of the unaltered images, SD over ``n`` fixed test-time variants), same network.

        The first variant is the unaltered image, so the bone ages equal :meth:`predict_arrays`'s;
        the SD (months) is None when ``n`` < 2 (TTA off). ``n`` defaults to this predictor's ``tta``.
        """
        n = self.tta if n is None else n
        preds = self._predict_variants(images, male, tta_variants(max(n, 1)), on_batch)
        spread = preds.std(axis=0, ddof=1) if n >= 2 else None
        return preds[0], spread

    def _predict_variants(self, images, male, variants: Sequence[Variant], on_batch=None) -> np.ndarray:
        """len(variants) x N predictions; each variant of a batch is one forward pass."""
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        out = np.empty((len(variants), len(images)), dtype=np.float32)
        male_arr = np.asarray(male, dtype=np.float32).reshape(-1)
        if len(male_arr) != len(images):
            raise ValueError(f"{len(images)} images but {len(male_arr)} sex values")
        cuda = self.device.type == "cuda"
        for start in range(0, len(images), self.batch_size):
            chunk = to_unit_float(images[start : start + self.batch_size])[:, None]
            x = torch.from_numpy(chunk)
            s = torch.from_numpy(male_arr[start : start + self.batch_size])
            if cuda:
                x = x.pin_memory().to(self.device, non_blocking=True)
                s = s.to(self.device, non_blocking=True)
            for v, variant in enumerate(variants):
                xv = variant.apply(x)
                xv = xv.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    y = self.model(xv, s)
                out[v, start : start + len(chunk)] = y.float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(chunk))
        return out

    def heatmap(self, image: np.ndarray, sex: str | None) -> np.ndarray:
        """Grad-CAM map (H x W in [0, 1]) of this model for one preprocessed image (see ``boneage.clinical.heatmap``)."""
        from boneage.clinical.heatmap import grad_cam

        return grad_cam(self.model, image, 1.0 if sex == "M" else 0.0, self.device)

    def _interval_ready(self) -> bool:
        """An interval is stated only with the TTA count the calibration was measured with."""
        cal = self.calibration
        if cal is None:
            return False
        if cal.tta >= 2 and self.tta != cal.tta:
            if not self._warned_tta:
                log.warning("the calibration was measured with %d test-time variants, not %d: no interval is "
                            "reported (use --tta %d)", cal.tta, self.tta, cal.tta)
                self._warned_tta = True
            return False
        return True

    def predict_prepared(self, films: Sequence[PreparedFilm], keep_preprocessed: bool = False,
                         score_anyway: bool | None = None) -> list[Prediction]:
        """The network on films made by :func:`prepare_radiograph` / :func:`prepare_file`, in batches: their
        results, in order.

        A film with an error gets its error; a refused film gets no numbers (it does not reach the network)
        unless ``score_anyway`` (default: this predictor's). Every result gets this model's version. Split
        from the preparation so bulk scoring can prepare on many CPUs and predict on a few GPU actors.
        """
        anyway = self.score_anyway if score_anyway is None else score_anyway
        ready = [i for i, film in enumerate(films) if film.ready and (anyway or not film.refused)]
        numbers: dict[int, dict] = {}
        if ready:
            images = np.stack([films[i].image for i in ready])
            male = [1.0 if films[i].sex == "M" else 0.0 for i in ready]
            months, spread = self.predict_arrays_tta(images, male)
            if self.calibration is not None:  # its linear recalibration, when it has one
                months = self.calibration.point(months)
            with_interval = self._interval_ready()
            for k, (i, value) in enumerate(zip(ready, months, strict=True)):
                numbers[i] = self._numbers(films[i], float(value), None if spread is None else float(spread[k]),
                                           with_interval)
        model = {"model_version": self.version, "model_trained": self.checkpoint.trained}
        return [film.result(keep_preprocessed, **model, **numbers.get(i, {})) for i, film in enumerate(films)]

    def _numbers(self, film: PreparedFilm, value: float, sd: float | None, with_interval: bool) -> dict:
        """The bone age of one film and every number made from it (the withheld fields of a result)."""
        out = {"bone_age_months": round(value, 2), "bone_age_years_months": years_months(value),
               "tta_sd_months": None if sd is None else round(sd, 3)}
        half = self.calibration.half_width(value, sd) if with_interval else None
        interval = None
        if half is not None:
            # A bone age is never negative: clipping keeps every covered truth covered.
            interval = (round(max(0.0, value - half), 2), round(value + half, 2))
            out.update(bone_age_interval_low=interval[0], bone_age_interval_high=interval[1],
                       interval_level=self.calibration.level)
        return {**out, **self._compare(film, value, interval)}

    def _compare(self, film: PreparedFilm, value: float, interval: tuple[float, float] | None) -> dict:
        """Difference, SDS, SDS range and category against the reference; never for an age outside it
        (an adult, a negative age), which keeps only its flag."""
        age = None if film.quality is not None and film.quality.age_out_of_range else film.chronological_age_months
        comparison = self.reference.compare(value, age, film.sex, interval)
        return {"bone_age_minus_chronological_months": comparison.minus_chronological_months,
                "sds": comparison.sds, "sds_low": comparison.sds_low, "sds_high": comparison.sds_high,
                "maturity_category": comparison.category, "reference": comparison.reference}

    def predict_radiographs(self, radiographs: Sequence[Radiograph], sexes: Sequence[str | None],
                            keep_preprocessed: bool = False, score_anyway: bool | None = None) -> list[Prediction]:
        """Preprocess and predict decoded radiographs; sex from the argument, else the DICOM header.

        ``keep_preprocessed`` keeps each model input image in ``Prediction.preprocessed``.
        """
        films = [prepare_radiograph(rad, self.preprocess_config, given)
                 for rad, given in zip(radiographs, sexes, strict=True)]
        return self.predict_prepared(films, keep_preprocessed, score_anyway)

    def predict_stream(self, rows: Iterable[PreparedFilm], keep_preprocessed: bool = False,
                       score_anyway: bool | None = None) -> Iterator[Prediction]:
        """:meth:`predict_prepared` on rows as they come, one batch at a time: each batch's results are
        yielded as soon as the network has scored it, and no more than a batch of films is held. ``rows``
        is best a generator (:func:`prepare_file` per file), so a film is read only when its batch fills."""
        pending: list[PreparedFilm] = []
        for row in rows:
            pending.append(row)
            if len(pending) >= self.batch_size:
                yield from self.predict_prepared(pending, keep_preprocessed, score_anyway)
                pending = []
        if pending:
            yield from self.predict_prepared(pending, keep_preprocessed, score_anyway)

    def predict_iter(self, uris: Iterable[str], sex: str | None = None, keep_preprocessed: bool = False,
                     chronological_age_months: float | None = None) -> Iterator[Prediction]:
        """Read, preprocess and predict files, yielding the rows batch by batch (a command prints each
        result as it is ready); unreadable files become error rows.

        ``chronological_age_months`` (for every file) wins over DICOM birth and study dates.
        """
        config = self.preprocess_config
        return self.predict_stream((prepare_file(uri, config, sex, chronological_age_months) for uri in uris),
                                   keep_preprocessed)

    def predict_files(self, uris: Iterable[str], sex: str | None = None, keep_preprocessed: bool = False,
                      chronological_age_months: float | None = None) -> list[Prediction]:
        """Every row of :meth:`predict_iter`, in the order of ``uris``."""
        return list(self.predict_iter(uris, sex, keep_preprocessed, chronological_age_months))


def prepare_radiograph(rad: Radiograph, config: PreprocessConfig, sex: str | None = None,
                       chronological_age_months: float | None = None, default_sex: str | None = None) -> PreparedFilm:
    """Everything before the network for one decoded film: sex, chronological age, preprocessing, verdict.

    Sex and age given here win over the DICOM header's; ``default_sex`` is taken only when neither says
    (``boneage score --sex``: a folder of PNGs, with DICOMs among them that know better). The model input is
    the film's ``image`` for :meth:`Predictor.predict_prepared`; a film that cannot be scored gets ``error``
    instead of raising. Needs no network, so bulk scoring runs it on CPU workers apart from the model.
    """
    age = chronological_age_months if chronological_age_months is not None else rad.chronological_age_months
    film = PreparedFilm(path=rad.path, id=file_id(rad.path), chronological_age_months=age,
                        identifiers=rad.identifiers or {})  # identifiers only when the caller asked read_image
    found = None
    try:
        found = parse_sex(sex) or rad.sex or parse_sex(default_sex)
        if found is None:
            raise BoneAgeError("sex unknown: give it (M or F); the image header does not say")
        result = preprocess(rad.pixels, config)
    except (BoneAgeError, ValueError) as exc:
        return replace(film, sex=found, error=str(exc), error_code=ErrorCode.BAD_INPUT)
    except Exception as exc:  # noqa: BLE001 - one odd film must not stop an archive
        return replace(film, sex=found, error=f"preprocessing failed: {type(exc).__name__}: {exc}",
                       error_code=ErrorCode.PREPROCESS_FAILED)
    age_finding = age_out_of_range(age)
    quality = Quality(**result.quality_flags({"age_out_of_range": age_finding} if age_finding else None))
    return replace(film, sex=found, quality=quality, image=result.image, hand_aspect=result.hand_aspect)


def refused(row: Prediction | PreparedFilm) -> bool:
    """Whether the film's verdict withholds its bone age (:mod:`boneage.prepare.verdict`)."""
    return row.refused


def withhold(row: Prediction) -> Prediction:
    """The result without the numbers of a refused film: its quality record says why (the endpoint withholds
    per request, after a batch scored with ``score_anyway``)."""
    return row.withheld()


def prepare_file(uri: str, config: PreprocessConfig, sex: str | None = None,
                 chronological_age_months: float | None = None, identifiers: bool = False,
                 default_sex: str | None = None) -> PreparedFilm:
    """Read then :func:`prepare_radiograph` one file; an unreadable file is an error film, never an exception.

    ``identifiers`` copies the DICOM patient name, ID and birth date into the film (off by default).
    """
    try:
        rad = read_image(uri, identifiers=identifiers, min_side=config.decode_min_side)
    except ImageReadError as exc:
        return PreparedFilm(path=uri, id=file_id(uri), error=str(exc), error_code=exc.code)
    return prepare_radiograph(rad, config, sex, chronological_age_months, default_sex)
