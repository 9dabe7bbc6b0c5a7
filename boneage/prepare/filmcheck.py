"""Is this film a left-hand radiograph, the right way round? A small network that looks at the whole film.

The bone-age model answers for any image; this check says when the answer would be meaningless.
It sees the film as the training set does (squashed to 100 x 100, :func:`~boneage.prepare.stages.to_domain`)
and gives nine probabilities: one per orientation of a hand (the eight flips and quarter turns of the
square, index 0 = a left hand, palm down, fingers up) and one for "not a hand". Three signals say
``not_a_hand``: the ninth class; the distance of the film's features (looked at again once turned
upright) from those of real hands; and the distance of its low-level texture statistics from real
hands' (both Mahalanobis, fitted on hands only, so they also catch kinds of image never shown).
Trained by ``scripts/filmcheck/train.py`` on RSNA hands and synthetic negatives; the real negatives
(other radiographs, photographs, screens) are kept for measuring (README "Films that are not hands").
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from boneage.files.payload import read_payload, write_payload

log = logging.getLogger(__name__)
FORMAT = "boneage-filmcheck"
FORMAT_VERSION = 1
SHIPPED_FILMCHECK = Path(__file__).parent.parent / "models" / "filmcheck.pt"
INPUT_SIZE = 100
N_ORIENTATIONS = 8
OTHER = N_ORIENTATIONS  # the class index of "not a hand"
TEXTURE_AT = 6  # body[:6]: the first two conv blocks, whose channel statistics describe grey-level texture


def orient(image: np.ndarray, index: int) -> np.ndarray:
    """The ``index``-th of the eight symmetries of the square: mirror (index >= 4), then ``index % 4``
    quarter turns counter-clockwise. Works on any H x W film (and on the ... x H x W batch)."""
    out = image[..., ::-1] if index >= 4 else image
    return np.ascontiguousarray(np.rot90(out, index % 4, axes=(-2, -1)))


def unorient(image: np.ndarray, index: int) -> np.ndarray:
    """The inverse of :func:`orient`: turns a film seen in orientation ``index`` back upright."""
    out = np.rot90(image, -(index % 4), axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if index >= 4 else out)


def is_mirrored(index: int) -> bool:
    return index >= 4


def is_turned(index: int) -> bool:
    return index % 4 != 0


class FilmCheckNet(nn.Module):
    """Five conv blocks over the 100 px film, then a 4 x 4 grid (where things are matters: a thumb on the
    left means a mirrored film) into a 128-d feature and nine logits."""

    def __init__(self, width: int = 32, features: int = 128):
        super().__init__()
        chans = [1, width, width * 2, width * 4, width * 8]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        blocks += [nn.Conv2d(chans[-1], chans[-1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[-1]), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(chans[-1] * 16, features), nn.ReLU(inplace=True))
        self.classify = nn.Linear(features, N_ORIENTATIONS + 1)
        self.width, self.features = width, features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits N x 9, features N x 128, texture N x 4*width) for N x 1 x 100 x 100 images in [0, 1].

        ``texture``: mean and SD of each channel after the second block, the film's grey-level texture
        (a radiograph's is unlike a drawing's or a photograph's, whatever the shape)."""
        h = self.body[:TEXTURE_AT](x)
        texture = torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)
        feats = self.embed(self.body[TEXTURE_AT:](h))
        return self.classify(feats), feats, texture


@dataclass
class Finding:
    """What the check saw in one film."""

    p_hand: float  # probability that it is a hand in any orientation
    orientation: int  # most likely orientation (0: as expected)
    p_orientation: float  # its share of p_hand
    distance: float  # Mahalanobis distance of the features from real hands'
    texture_distance: float  # the same for the texture statistics
    not_a_hand: bool
    detail: str


@dataclass
class Gaussian:
    """Mean and precision of real hands' feature vectors: how far a film's are, in SDs (Mahalanobis)."""

    mean: torch.Tensor
    precision: torch.Tensor

    @classmethod
    def fit(cls, features: np.ndarray, shrink: float = 0.05) -> Gaussian:
        mean = features.mean(0)
        cov = np.cov(features - mean, rowvar=False)
        cov = (1 - shrink) * cov + shrink * np.trace(cov) / len(cov) * np.eye(len(cov))  # stable to invert
        return cls(torch.from_numpy(mean).float(), torch.from_numpy(np.linalg.inv(cov)).float())

    def distance(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        centred = torch.as_tensor(features).float() - self.mean
        return torch.sqrt(torch.clamp(((centred @ self.precision) * centred).sum(1), min=0)).numpy()


@dataclass(frozen=True)
class Thresholds:
    """Where the check refuses a film: a hand probability below ``min_p_hand``, or shapes (features) or
    texture further from real hands' than these distances, in SDs."""

    min_p_hand: float = 0.0
    max_distance: float = 0.0
    max_texture_distance: float = 0.0


class FilmCheck:
    """The trained network, the hands' feature statistics and the three thresholds, from one file."""

    def __init__(self, net: FilmCheckNet, features: Gaussian, texture: Gaussian, thresholds: Thresholds,
                 metadata: dict | None = None):
        self.net = net.eval().to(memory_format=torch.channels_last)  # measured 1.3x faster on one CPU core
        self.features, self.texture = features, texture
        self.thresholds = thresholds
        self.metadata = metadata or {}

    @classmethod
    def load(cls, uri: str | None = None) -> FilmCheck:
        payload, _ = read_payload(str(uri or SHIPPED_FILMCHECK), FORMAT, FORMAT_VERSION)
        net = FilmCheckNet(**payload["net"])
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
        thresholds = Thresholds(float(payload["min_p_hand"]), float(payload["max_distance"]),
                                float(payload["max_texture_distance"]))
        return cls(net, Gaussian(*payload["features"]), Gaussian(*payload["texture"]), thresholds,
                   payload.get("metadata", {}))

    def save(self, uri: str) -> None:
        state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()  # about 2 MB
                 for k, v in self.net.state_dict().items()}
        write_payload(uri, {"format": FORMAT, "format_version": FORMAT_VERSION,
                            "net": {"width": self.net.width, "features": self.net.features},
                            "state_dict": state, "features": [self.features.mean, self.features.precision],
                            "texture": [self.texture.mean, self.texture.precision], **dataclasses.asdict(self.thresholds),
                            "metadata": self.metadata})

    @torch.inference_mode()
    def scores(self, films: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities N x 9, feature distances N, texture distances N) for N x 100 x 100 uint8 films."""
        x = torch.from_numpy(np.asarray(films, dtype=np.float32)[:, None] / 255.0)
        x = x.contiguous(memory_format=torch.channels_last)
        logits, feats, texture = self.net(x)
        return torch.softmax(logits, 1).numpy(), self.features.distance(feats), self.texture.distance(texture)

    def findings(self, films: np.ndarray) -> list[Finding]:
        """One :class:`Finding` per film of an N x 100 x 100 uint8 batch.

        A film found in another orientation is turned back and looked at again: its distances are those
        of the upright view (real hands' statistics were fitted upright)."""
        films = np.asarray(films)
        probs, distances, textures = self.scores(films)
        orientations = probs[:, :OTHER].argmax(1)
        turned = np.flatnonzero(orientations)
        if turned.size:
            upright = np.stack([unorient(films[i], int(orientations[i])) for i in turned])
            _, distances[turned], textures[turned] = self.scores(upright)
        out = []
        for p, k, d, t in zip(probs, orientations, distances, textures, strict=True):
            p_hand = float(1.0 - p[OTHER])
            reasons, limit = [], self.thresholds
            if p_hand < limit.min_p_hand:
                reasons.append(f"hand probability {p_hand:.2f} below {limit.min_p_hand:.2f}")
            if d > limit.max_distance:
                reasons.append(f"shapes unlike the training hands' (distance {d:.1f} over {limit.max_distance:.1f})")
            if t > limit.max_texture_distance:
                reasons.append(f"texture unlike a radiograph's (distance {t:.1f} over {limit.max_texture_distance:.1f})")
            out.append(Finding(p_hand, int(k), float(p[k] / max(p_hand, 1e-9)), float(d), float(t), bool(reasons),
                               "; ".join(reasons)))
        return out


_LOADED: dict[str | None, FilmCheck] = {}
_LOADING = threading.Lock()  # threads preparing films at once (``boneage listen``) share one load


def get_filmcheck(uri: str | None = None) -> FilmCheck:
    """Loaded once per process (per URI), like the U-Net."""
    with _LOADING:
        if uri not in _LOADED:
            _LOADED[uri] = FilmCheck.load(uri)
            log.debug("film check loaded from %s", uri or SHIPPED_FILMCHECK)
        return _LOADED[uri]


def clear_cache() -> None:
    """Forget every loaded film check: the next ``get_filmcheck`` reads its file again."""
    with _LOADING:
        _LOADED.clear()
