"""The seed's training recipe as plain PyTorch: one epoch of training, one pass of validation.

Ray Train's worker loop (``boneage/jobs/train.py``) and the plain single-process loop of the benchmark
call these same functions, so the distributed run differs from the simple one only in who feeds the
batches and who averages the gradients.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from boneage.configs import check_known_keys, from_known_dict
from boneage.devices import bf16_fast
from boneage.network.model import ModelConfig
from boneage.train.augment import AugmentConfig, augment_batch


@dataclass(frozen=True)
class TrainConfig:
    """The seed's defaults; every field can be overridden from the command line or a JSON file."""

    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    # "plateau" (the seed's ReduceLROnPlateau on validation MAE) or "cosine" (linear warm-up for
    # warmup_epochs, then cosine decay towards 0 over the remaining epochs: for a fixed, short budget).
    schedule: str = "plateau"
    warmup_epochs: int = 0
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    early_stop_patience: int = 30
    checkpoint_every: int = 7
    keep_checkpoints: int = 2
    bin_months: int = 12
    weight_power: float = 1.0  # category weights proportional to count^-power (boneage.train.weighting)
    epoch_size: int | None = None
    mix_share: float = 0.5  # with a second training cache (``boneage train --mix``): its share of each epoch
    # bf16 autocast, on the GPU and on CPUs with native bf16 (ResNet-34 1.7x faster on the development
    # machine; EfficientNet-Lite0 0.85x there: README "bf16 on CPUs too")
    amp: bool = True
    # Re-estimate BatchNorm statistics on this many of the epoch's last training batches before each
    # validation (0: off). With few steps per epoch the running averages lag the weights; a network
    # trained from scratch on a small set then scores wildly in eval mode (see bn_recalibrate).
    precise_bn_batches: int = 0
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.schedule not in ("plateau", "cosine"):
            raise ValueError(f"schedule must be 'plateau' or 'cosine', not {self.schedule!r}")
        if not 0 < self.mix_share < 1:
            raise ValueError(f"mix_share must be between 0 and 1, not {self.mix_share}")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["model"] = self.model.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> TrainConfig:
        check_known_keys(cls, data, "training config")
        data = dict(data)
        if isinstance(data.get("model"), Mapping):
            data["model"] = ModelConfig.from_dict(dict(data["model"]))
        if isinstance(data.get("augment"), Mapping):
            data["augment"] = from_known_dict(AugmentConfig, data["augment"], "augmentation config")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        return cls.from_dict(json.loads(text))


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig):
    """The learning-rate schedule, stepped once per epoch (``step(val_mae)`` for both kinds)."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.plateau_factor,
                                                          patience=config.plateau_patience)
    return EpochCosine(optimizer, config.epochs, config.warmup_epochs)


class EpochCosine(torch.optim.lr_scheduler.LambdaLR):
    """Warm-up then cosine, by epoch; ``step`` takes (and ignores) a metric, like ReduceLROnPlateau."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, warmup: int):
        def factor(epoch: int) -> float:
            if epoch < warmup:
                return (epoch + 1) / (warmup + 1)
            return float(0.5 * (1 + np.cos(np.pi * (epoch - warmup) / max(1, epochs - warmup))))

        super().__init__(optimizer, factor)

    def step(self, metrics=None) -> None:  # noqa: ARG002 - same call as ReduceLROnPlateau
        super().step()


def batch_tensors(batch: Mapping[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Cache batch (uint8 images N x S x S, male, boneage) -> float tensors on ``device``."""
    cuda = device.type == "cuda"
    images = batch["image"]
    if cuda:
        images = images.pin_memory()
    x = images.to(device, non_blocking=cuda).unsqueeze(1).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)
    male = batch["male"].to(device, non_blocking=cuda).float()
    age = batch["boneage"].to(device, non_blocking=cuda).float()
    return x, male, age


@dataclass
class Epoch:
    """What one pass of :func:`train_epoch` leaves: the mean loss, the samples seen, and the epoch's last
    model inputs when asked for (``keep_last``) for :func:`bn_recalibrate`."""

    loss: float
    samples: int
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass(frozen=True)
class EpochOptions:
    """How :func:`train_epoch` treats each batch: ``augment`` (``build_augmentation``'s, on the device;
    None: none), bf16 autocast where the device is fast at it (``amp``), and the last ``keep_last``
    batches' model inputs kept for :func:`bn_recalibrate`."""

    augment: object | None = None
    amp: bool = True
    keep_last: int = 0


def train_epoch(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                device: torch.device, options: EpochOptions | None = None) -> Epoch:
    """One pass with L1 loss. The loss is summed on the device and read once at the end, so there is no
    host-device sync per step. Progress bars, timers and per-step schedules wrap ``batches`` from outside
    (the loop asks for the next batch only after the previous step)."""
    options = options or EpochOptions()
    augment, keep_last = options.augment, options.keep_last
    model.train()
    total = torch.zeros((), device=device)
    seen = 0
    autocast = options.amp and bf16_fast(device)
    kept: collections.deque = collections.deque(maxlen=keep_last)
    for batch in batches:
        x, male, age = batch_tensors(batch, device)
        if augment is not None:
            x = augment_batch(x, augment)
        if keep_last:
            kept.append((x, male))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = model(x, male)
        loss = nn.functional.l1_loss(pred.float(), age)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(age)
        seen += len(age)
    return Epoch(float(total) / seen if seen else float("nan"), seen, list(kept))


@torch.no_grad()
def bn_recalibrate(model: nn.Module, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]], amp: bool = True) -> int:
    """"Precise BN": replace every BatchNorm's running statistics by their plain average over ``inputs``
    (batches the current weights have just trained on). Eval-mode outputs then match the weights
    they come with; returns the number of BatchNorm layers reset. Under DDP the statistics are
    averaged over the workers, so every rank (and the saved model) holds the same ones."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or not inputs:
        return 0
    momenta = [m.momentum for m in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    device_type = inputs[0][0].device.type
    for x, male in inputs:
        with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=amp and bf16_fast(inputs[0][0].device)):
            model(x, male)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for layer in layers:
            for buffer in (layer.running_mean, layer.running_var):
                dist.all_reduce(buffer)
                buffer.div_(dist.get_world_size())
    model.train(was_training)
    return len(layers)


@torch.inference_mode()
def predict_batches(model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], device: torch.device,
                    amp: bool = True) -> dict[str, np.ndarray]:
    """Predictions with their truth and sex, for the metrics."""
    model.eval()
    preds, ages, males = [], [], []
    autocast = amp and bf16_fast(device)
    for batch in batches:
        x, male, age = batch_tensors(batch, device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            preds.append(model(x, male).float())
        ages.append(age)
        males.append(male)
    if not preds:
        return {"pred": np.zeros(0), "true": np.zeros(0), "male": np.zeros(0)}
    return {"pred": torch.cat(preds).cpu().numpy(), "true": torch.cat(ages).cpu().numpy(),
            "male": torch.cat(males).cpu().numpy()}
