"""The one result schema: what a scored film is, defined once, read by every output.

:class:`Prediction` (immutable, with its nested :class:`Quality`) is the result of the one prediction path.
The Parquet columns (:mod:`boneage.predict.scoring`), the command line's ``--json``, the endpoint's answer
(:mod:`boneage.serving.schemas`), what a refusal withholds, and the fields the text, report, SR and page
renderers add for a new output are all derived from its fields and their :class:`Output` marks; nothing
else lists field names (docs/howto/add-output-field.md). :class:`PreparedFilm` is the film before the
network: a refused film yields a result without numbers, never numbers erased afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from boneage.prepare.verdict import REFUSALS, WARNINGS, Reason, Verdict

__all__ = ["REFUSALS", "WARNINGS", "ErrorCode", "Output", "PreparedFilm", "Prediction", "Quality", "Reason",
           "Verdict", "labelled_fields", "output_fields", "plain_type", "public_fields", "withheld_fields"]


class ErrorCode(StrEnum):
    """Why a film has no result (``error_code``): reading (:class:`boneage.errors.ImageReadError`), preparing,
    or serving."""

    EMPTY = "empty"
    TRUNCATED = "truncated"
    DECODE_FAILED = "decode_failed"
    NO_PIXELS = "no_pixels"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"
    NOT_A_FILE = "not_a_file"
    NOT_FOUND = "not_found"
    READ_TIMEOUT = "read_timeout"
    UNREADABLE = "unreadable"
    BAD_INPUT = "bad_input"  # no sex, a contradictory manifest, a film the stages cannot take
    PREPROCESS_FAILED = "preprocess_failed"
    MODEL_CHANGED = "model_changed"  # the endpoint's model was swapped between preparing and scoring


@dataclass(frozen=True)
class Output:
    """How a result field travels, beside its type (``Annotated[float | None, Output(...)]``).

    ``withheld``: a number a refusal withholds. ``public``: in the endpoint's answer (the path, the id and the
    error stay on the server). ``present``: never null in an answer (a scored film always has it).
    ``label`` (with ``digits`` and ``unit``): the text, report and page show the field as "label: value" --
    fields without one are drawn by those renderers' own wording.
    """

    withheld: bool = False
    public: bool = True
    present: bool = False
    label: str | None = None
    digits: int | None = None
    unit: str = ""

    def text(self, value: Any) -> str:
        """The value as the renderers write it: ``digits`` decimals, then the unit."""
        shown = f"{value:.{self.digits}f}" if self.digits is not None and isinstance(value, float) else str(value)
        return f"{shown}{self.unit}"


WITHHELD = Output(withheld=True)
PRIVATE = Output(public=False)
PRESENT = Output(present=True)


class _Record(BaseModel):
    """Frozen, and refuses unknown keys: a misspelt field is an error, not a silent extra."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    # The record read as a mapping too (``quality.get("verdict")``, ``{**quality}``): what callers did with the
    # dict it replaces.
    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> Iterator[str]:
        return iter(type(self).model_fields)


# The film's verdict (boneage.prepare.verdict) and the measures behind it; one boolean per known reason.
Quality = create_model(
    "Quality",
    __base__=_Record,
    __doc__="The film's verdict (boneage.prepare.verdict): ``refused`` withholds the bone age unless score_anyway.",
    verdict=(Verdict, Verdict.OK),
    reasons=(str | None, None),
    detail=(str | None, None),
    contrast=(float | None, None),
    hand_fraction=(float | None, None),
    p_hand=(float | None, None),
    hand_distance=(float | None, None),
    texture_distance=(float | None, None),
    orientation_corrected=(int | None, None),
    **{reason.value: (bool, False) for reason in Reason},
    rejection=(str | None, None),
    rejection_detail=(str | None, None),
)


class Prediction(_Record):
    """One scored film: the row of every output. ``error`` is None on success, else why it was not scored.

    Add an output by adding a field here (docs/howto/add-output-field.md). The fields after ``error_code``
    travel with the result but are no output: ``extra`` (patient identifiers when asked for, notes of the
    command line), the model input and the hand's proportions (for a heatmap).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Annotated[str, PRIVATE]
    id: Annotated[str, PRIVATE]
    sex: Annotated[str | None, PRESENT] = None
    chronological_age_months: float | None = None
    bone_age_months: Annotated[float | None, WITHHELD] = None  # null for a refused film, unless scored anyway
    bone_age_years_months: Annotated[str | None, WITHHELD] = None
    # Clinical outputs (README "Clinical outputs"): the interval only from a calibrated model, the
    # comparison only when the chronological age is known (SDS only inside the reference's ages).
    bone_age_interval_low: Annotated[float | None, WITHHELD] = None
    bone_age_interval_high: Annotated[float | None, WITHHELD] = None
    interval_level: Annotated[float | None, WITHHELD] = None
    tta_sd_months: Annotated[float | None, WITHHELD] = None
    bone_age_minus_chronological_months: Annotated[float | None, WITHHELD] = None
    sds: Annotated[float | None, WITHHELD] = None
    sds_low: Annotated[float | None, WITHHELD] = None  # the interval's ends as SDS (same SD); null without one
    sds_high: Annotated[float | None, WITHHELD] = None
    maturity_category: Annotated[str | None, WITHHELD] = None  # delayed, average, advanced or indeterminate
    reference: Annotated[str | None, WITHHELD] = None
    quality: Annotated[Quality | None, PRESENT] = None
    model_version: Annotated[str | None, PRESENT] = None
    model_trained: Annotated[bool | None, PRESENT] = None
    error: Annotated[str | None, PRIVATE] = None
    error_code: Annotated[ErrorCode | None, PRIVATE] = None
    extra: dict = Field(default_factory=dict, exclude=True)
    preprocessed: np.ndarray | None = Field(default=None, exclude=True, repr=False)
    hand_aspect: float | None = Field(default=None, exclude=True, repr=False)

    @property
    def refused(self) -> bool:
        """Whether the film's verdict withholds its bone age (:mod:`boneage.prepare.verdict`)."""
        return self.quality is not None and self.quality.verdict is Verdict.REFUSED

    def withheld(self) -> Prediction:
        """This result without the numbers a refusal withholds (the endpoint decides per request)."""
        return self.model_copy(update=dict.fromkeys(withheld_fields(type(self))))

    def to_dict(self) -> dict:
        """The JSON of ``boneage predict --json``: every output field (quality nested), then ``extra``."""
        return {**self.model_dump(mode="json"), **self.extra}

    def answer(self) -> dict:
        """The endpoint's fields of this result (no path, id or error), JSON-ready."""
        return self.model_dump(mode="json", include=set(public_fields(type(self))))


def output_fields(result: type[BaseModel] = Prediction) -> dict[str, FieldInfo]:
    """The fields that are outputs, in column order (the carried ones, ``exclude``, are not)."""
    return {name: info for name, info in result.model_fields.items() if not info.exclude}


def mark(info: FieldInfo) -> Output:
    return next((m for m in info.metadata if isinstance(m, Output)), Output())


def withheld_fields(result: type[BaseModel] = Prediction) -> tuple[str, ...]:
    """What a refusal withholds: the bone age and every number made from it."""
    return tuple(name for name, info in output_fields(result).items() if mark(info).withheld)


def public_fields(result: type[BaseModel] = Prediction) -> dict[str, FieldInfo]:
    """The fields of the endpoint's answer."""
    return {name: info for name, info in output_fields(result).items() if mark(info).public}


def labelled_fields(result: type[BaseModel] = Prediction) -> dict[str, Output]:
    """The fields the renderers show as "label: value" (see :class:`Output`)."""
    return {name: mark(info) for name, info in output_fields(result).items() if mark(info).label}


def plain_type(annotation: Any) -> Any:
    """``float | None`` -> ``float``: the type of a field's value when it has one."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args and (get_origin(annotation) is Union or type(annotation).__name__ == "UnionType"):
        return args[0]
    return annotation


@dataclass(frozen=True)
class PreparedFilm:
    """One film before the network: who it is (sex, age), the model's input and the verdict, or why it
    could not be prepared. Made by :func:`boneage.predict.predictor.prepare_radiograph`."""

    path: str
    id: str
    sex: str | None = None
    chronological_age_months: float | None = None
    quality: Quality | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    hand_aspect: float | None = None
    identifiers: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    error_code: ErrorCode | None = None

    @property
    def refused(self) -> bool:
        return self.quality is not None and self.quality.verdict is Verdict.REFUSED

    @property
    def ready(self) -> bool:
        """Whether the network can score it."""
        return self.error is None and self.image is not None

    def result(self, keep_image: bool = False, **fields: Any) -> Prediction:
        """Its result: what was known before the network plus ``fields`` (the model's version, the numbers:
        none for a refused film or an error); the model input only with ``keep_image``."""
        known = {"path": self.path, "id": self.id, "sex": self.sex, "quality": self.quality,
                 "chronological_age_months": self.chronological_age_months, "error": self.error,
                 "error_code": self.error_code, "extra": dict(self.identifiers),
                 "preprocessed": self.image if keep_image else None, "hand_aspect": self.hand_aspect}
        return Prediction(**{**known, **fields})
