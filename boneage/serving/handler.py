"""The online endpoint's work without Ray: file bytes + sex in, a JSON-ready dict out.

Ray Serve (``boneage/serving/ingress.py``) is a thin layer over this class, so the request logic (limits,
error codes, the response shape) is testable and usable without a cluster, and the image path is
the one of the command line: :func:`boneage.files.images.decode_image`, :func:`boneage.predict.predictor.prepare_radiograph`
and :meth:`boneage.predict.predictor.Predictor.predict_prepared`. Nothing here logs image content or
patient fields.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.errors import BoneAgeError, ImageReadError
from boneage.files.images import DEFAULT_MAX_PIXELS, decode_image, parse_sex
from boneage.predict.predictor import Predictor, default_model_uri, prepare_radiograph
from boneage.predict.result import ErrorCode, Prediction, PreparedFilm, public_fields
from boneage.prepare.stages import PreprocessConfig

DEFAULT_MAX_UPLOAD_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_FILES = 16
# All the files of one /v1/predict/batch request together: far below max_files x max_upload_bytes (800 MB),
# so 32 concurrent batch requests cannot hold tens of GB (issue 31, item 3). A batch's files are read and
# prepared one at a time, so a replica holds at most one raw file per request in memory.
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024
# The reading failures of boneage.files.images, as HTTP statuses: the client sent something we cannot use.
_READ_STATUS = {
    "empty": 400,
    "truncated": 422,
    "decode_failed": 422,
    "no_pixels": 422,
    "unsupported_format": 415,
    "too_large": 413,
}
# Fields of a response besides the notice, the warning and the heatmap: the result's public fields
# (boneage.predict.result); new outputs are added as new keys, so clients must ignore keys they do not know.
RESPONSE_FIELDS = tuple(public_fields())


class RequestError(BoneAgeError):
    """Something the client must fix; ``status`` is the HTTP status, ``code`` a stable short reason."""

    def __init__(self, status: int, code: str, detail: str):
        self.status, self.code, self.detail = status, code, detail
        super().__init__(detail)

    def to_dict(self) -> dict:
        return {"error_code": self.code, "error": self.detail}


@dataclass(frozen=True)
class Limits:
    """Per-request limits, checked before any pixel is decoded (a decompression bomb costs nothing)."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES

    def __post_init__(self) -> None:
        if min(self.max_upload_bytes, self.max_pixels, self.max_files, self.max_batch_bytes) < 1:
            raise ValueError("max_upload_bytes, max_pixels, max_files and max_batch_bytes must be positive")


class BoneAgeService:
    """One loaded model and its limits. ``prepare`` is per request (CPU), ``predict`` per batch."""

    def __init__(self, predictor: Predictor, limits: Limits | None = None, model_uri: str | None = None):
        self.predictor = predictor
        self.limits = limits or Limits()
        self.model_uri = model_uri

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None, limits: Limits | None = None,
             batch_size: int = 16) -> BoneAgeService:
        """``model`` as for ``boneage predict --model``: a URI, ``untrained``, or None for the default."""
        uri = model or default_model_uri()
        return cls(Predictor.load(uri, device=device, batch_size=batch_size), limits, model_uri=uri)

    @property
    def model_version(self) -> str:
        return self.predictor.version

    @property
    def model_trained(self) -> bool:
        return bool(self.predictor.checkpoint.trained)

    def prepare(self, data: bytes, sex: str | None, chronological_age_months: float | None = None,
                name: str = "upload") -> PreparedFilm:
        """:func:`prepare_upload` with this model's preprocessing and these limits."""
        return prepare_upload(data, sex, chronological_age_months, name, config=self.predictor.preprocess_config,
                              limits=self.limits)

    def predict(self, films: Sequence[PreparedFilm]) -> list[Prediction]:
        """The network on prepared films, as one batch (the same call as bulk scoring): their results.

        Refused films are scored too: each request decides in :meth:`response` whether to withhold its
        number. The model input stays on each result until then, which may draw its heatmap.
        """
        return self.predictor.predict_prepared(list(films), keep_preprocessed=True, score_anyway=True)

    def response(self, row: Prediction, heatmap: bool = False, score_anyway: bool = False) -> dict:
        """:func:`response_body`, plus ``heatmap_png_base64`` when ``heatmap``: the Grad-CAM overlay on the
        model input (a second pass through the network with gradients; run it where the model runs)."""
        withheld = row.refused and not score_anyway
        body = response_body(row, score_anyway)
        if heatmap and not withheld and row.preprocessed is not None:
            from boneage.clinical.heatmap import overlay_png

            png = overlay_png(row.preprocessed, self.predictor.heatmap(row.preprocessed, row.sex), row.hand_aspect)
            body["heatmap_png_base64"] = base64.b64encode(png).decode("ascii")
        return body

    def predict_one(self, data: bytes, sex: str | None, chronological_age_months: float | None = None,
                    heatmap: bool = False, score_anyway: bool = False) -> dict:
        """Prepare, predict and answer one upload in this process (no Ray)."""
        return self.response(self.predict([self.prepare(data, sex, chronological_age_months)])[0], heatmap,
                             score_anyway)


def prepare_upload(data: bytes, sex: str | None, chronological_age_months: float | None, name: str, *,
                   config: PreprocessConfig, limits: Limits) -> PreparedFilm:
    """Decode and preprocess one upload; raises :class:`RequestError` for anything the client must fix.

    Needs no network, so the endpoint runs it in parallel, apart from the batched model. Sex may be
    omitted for a DICOM whose header carries it. A film the verdict refuses (not a hand) is not an
    error either: it is answered with its reason, as on the command line.
    """
    if len(data) > limits.max_upload_bytes:
        raise RequestError(413, "too_large", f"file is {len(data)} bytes, over the limit of "
                                             f"{limits.max_upload_bytes} bytes")
    try:
        given_sex = parse_sex(sex)
    except ValueError as exc:
        raise RequestError(400, "bad_sex", str(exc)) from None
    if chronological_age_months is not None and not math.isfinite(chronological_age_months):
        raise RequestError(400, "bad_age", "chronological_age_months must be a finite number of months")
    try:
        rad = decode_image(data, name, max_pixels=limits.max_pixels, min_side=config.decode_min_side)
    except ImageReadError as exc:
        raise RequestError(_READ_STATUS.get(exc.code, 422), exc.code, exc.reason) from None
    row = prepare_radiograph(rad, config, given_sex, chronological_age_months)
    if row.error is not None:
        if row.error_code == ErrorCode.BAD_INPUT and row.sex is None:
            raise RequestError(400, "missing_sex", "sex is required (M or F): the image header does not say")
        raise RequestError(422, row.error_code or "bad_input", row.error)
    return row


def response_body(row: Prediction, score_anyway: bool = False) -> dict:
    """The JSON body for one scored film: no path, no identifiers, only what the client sent or we computed.

    A refused film's bone age is null, and ``quality`` says why, unless ``score_anyway``.
    """
    if row.refused and not score_anyway:
        row = row.withheld()
    body = row.answer()
    body["notice"] = RESEARCH_USE_ONLY
    if not row.model_trained:
        body["warning"] = "untrained model: this bone age is meaningless"
    return body
