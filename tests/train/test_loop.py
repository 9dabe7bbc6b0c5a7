"""The plain training functions that Ray Train's workers and the benchmark's loop share."""

from __future__ import annotations

import torch

from boneage.network.model import ModelConfig, build_model
from boneage.train.loop import EpochOptions, bn_recalibrate, predict_batches, train_epoch


def _batches(n: int, size: int = 64, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (4, size, size), generator=g, dtype=torch.uint8),
             "male": torch.tensor([1.0, 0.0, 1.0, 0.0]), "boneage": torch.tensor([30.0, 90.0, 150.0, 200.0])}
            for _ in range(n)]


def test_bn_recalibrate_sets_running_statistics_to_the_average_over_the_kept_batches():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", hidden_units=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    epoch = train_epoch(model, _batches(3), optimizer, torch.device("cpu"),
                        EpochOptions(amp=False, keep_last=2))
    kept = epoch.inputs
    assert epoch.samples == 12
    assert len(kept) == 2 and kept[0][0].shape == (4, 1, 64, 64)  # the last two batches, as the model saw them
    first_bn = model.backbone.bn1
    first_bn.running_mean.fill_(1e3)
    assert bn_recalibrate(model, kept, amp=False) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():  # what the first BatchNorm sees: the first convolution of the normalised input
        conv = [model.backbone.conv1((x - 0.449) / 0.226) for x, _ in kept]
    expected = torch.stack([c.mean(dim=(0, 2, 3)) for c in conv]).mean(0)
    assert torch.allclose(first_bn.running_mean, expected, atol=1e-4)
    assert first_bn.momentum == 0.1 and model.training  # momentum and mode as they were
    out = predict_batches(model, _batches(1, seed=1), torch.device("cpu"), amp=False)
    assert out["pred"].shape == (4,) and torch.isfinite(torch.from_numpy(out["pred"])).all()


def test_instrumentation_wraps_the_batches_from_outside():
    """What the Ray Train worker does: a progress step after each batch and the data-wait time, with no hook
    inside train_epoch."""
    import time

    from boneage.train.meters import Waited, after_each

    def slow(batches):
        for batch in batches:
            time.sleep(0.02)
            yield batch

    steps: list[int] = []
    waited = Waited(slow(_batches(3)))
    model = build_model(ModelConfig(backbone="resnet18", hidden_units=8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    epoch = train_epoch(model, after_each(waited, lambda: steps.append(len(steps))), optimizer, torch.device("cpu"),
                        EpochOptions(amp=False))
    assert epoch.samples == 12 and steps == [0, 1, 2] and waited.seconds >= 0.06
