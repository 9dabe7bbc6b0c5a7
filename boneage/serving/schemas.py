"""The endpoint's HTTP schema: what ``/openapi.json`` describes (clients must ignore fields they do not know)."""
# No ``from __future__ import annotations`` here: FastAPI and pydantic read the annotations at runtime.

from pydantic import BaseModel, ConfigDict, Field, create_model

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.predict.result import Prediction, Quality, mark, plain_type, public_fields

__all__ = ["BatchItem", "BatchResponse", "BoneAgeResult", "ErrorBody", "Quality", "response_model"]


def response_model(result: type[Prediction] = Prediction) -> type[BaseModel]:
    """The endpoint's answer for one film, derived from the result type: its public fields (one that every
    answer has, ``present``, is required and not nullable), the heatmap, the warning and the notice. Strict:
    a key the answer has and the result type lacks is an error, not a silent extra."""
    fields = {}
    for name, info in public_fields(result).items():
        if mark(info).present:
            fields[name] = (plain_type(info.annotation), Field(description=info.description))
        else:
            fields[name] = (info.annotation, Field(default=info.default, description=info.description))
    return create_model(
        "BoneAgeResult",
        __config__=ConfigDict(extra="forbid", protected_namespaces=()),
        __doc__="One scored radiograph: a refused film's bone age and clinical outputs are null "
                "(quality.verdict), unless score_anyway. New outputs arrive as new fields.",
        **fields,
        heatmap_png_base64=(str | None, None),
        warning=(str | None, None),
        notice=(str, RESEARCH_USE_ONLY),
    )


BoneAgeResult = response_model()


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    status: int
    result: BoneAgeResult | None = None
    error_code: str | None = None
    error: str | None = None


class BatchResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    results: list[BatchItem]
    model_version: str


class ErrorBody(BaseModel):
    error_code: str
    error: str
