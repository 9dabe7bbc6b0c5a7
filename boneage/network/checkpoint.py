"""One self-describing checkpoint file: weights, model config, preprocessing config, training
metadata and a format version. Whoever loads it (training resume, bulk scoring, the endpoint) rebuilds
exactly the network and the image pipeline it was trained with, so there is no train/serve skew.

The file is a ``torch.save`` of plain Python types and tensors, loaded with ``weights_only=True``
(no pickled code runs on load).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field

import torch

from boneage import __version__
from boneage.files.payload import read_payload, write_payload
from boneage.network.model import BoneAgeNet, ModelConfig, build_model
from boneage.prepare.stages import PreprocessConfig

FORMAT = "boneage-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``version`` identifies the exact weights (a hash of the file)."""

    model: BoneAgeNet
    preprocess: PreprocessConfig
    metadata: dict = field(default_factory=dict)
    version: str = ""

    @property
    def trained(self) -> bool:
        return bool(self.metadata.get("trained", False))


def save_checkpoint(
    uri: str, model: BoneAgeNet, preprocess: PreprocessConfig, metadata: dict | None = None, half: bool = False
) -> str:
    """Write the checkpoint atomically; returns its version string.

    ``half`` stores floating-point tensors as fp16: half the size (the shipped model must stay small),
    and loading casts them back into the float32 network, so inference is unchanged up to rounding.
    """
    meta = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "boneage_version": __version__,
        "torch_version": str(torch.__version__),
        "trained": False,
        **(metadata or {}),
        "weights_dtype": "float16" if half else "float32",
    }
    meta = json.loads(json.dumps(meta))  # plain JSON types only: readable with weights_only=True
    data = write_payload(uri, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "preprocess_config": preprocess.to_dict(),
        "metadata": meta,
        "state_dict": {k: _stored(v.detach().cpu(), half) for k, v in model.state_dict().items()},
    })
    return _version(model.config, data)


def _stored(tensor: torch.Tensor, half: bool) -> torch.Tensor:
    return tensor.half() if half and tensor.is_floating_point() else tensor


def load_checkpoint(uri: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    payload, data = read_payload(uri, FORMAT, FORMAT_VERSION, map_location)
    model_config = ModelConfig.from_dict({**payload["model_config"], "pretrained": None})
    model = build_model(model_config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Checkpoint(
        model=model,
        preprocess=PreprocessConfig.from_dict(payload["preprocess_config"]),
        metadata=payload.get("metadata", {}),
        version=_version(model_config, data),
    )


def _version(config: ModelConfig, data: bytes) -> str:
    return f"{config.backbone}-{hashlib.sha256(data).hexdigest()[:12]}"
