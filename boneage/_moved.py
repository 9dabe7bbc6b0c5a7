"""The module paths of boneage 0.1 before its stage folders (``boneage.predictor``, ``boneage.serve:app``...),
kept working for one release: importing one gives the module at its new path (README "Layout")."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

OLD_PATHS = {
    "boneage.storage": "boneage.files.storage",
    "boneage.io": "boneage.files.images",
    "boneage.payload": "boneage.files.payload",
    "boneage.commits": "boneage.files.parts",
    "boneage.cache": "boneage.files.cache",
    "boneage.samples": "boneage.files.montage",
    "boneage.preprocessing": "boneage.prepare.stages",
    "boneage.filmcheck": "boneage.prepare.filmcheck",
    "boneage.verdict": "boneage.prepare.verdict",
    "boneage.segmentation": "boneage.prepare.segmentation",
    "boneage.segmentation.unet": "boneage.prepare.segmentation.unet",
    "boneage.segmentation.classical": "boneage.prepare.segmentation.classical",
    "boneage.segmentation.training": "boneage.train.segmenter",
    "boneage.backbones": "boneage.network.backbones",
    "boneage.model": "boneage.network.model",
    "boneage.checkpoint": "boneage.network.checkpoint",
    "boneage.uncertainty": "boneage.clinical.intervals",
    "boneage.reference": "boneage.clinical.reference",
    "boneage.heatmap": "boneage.clinical.heatmap",
    "boneage.predictor": "boneage.predict.predictor",
    "boneage.scoring": "boneage.predict.scoring",
    "boneage.report": "boneage.predict.report",
    "boneage.training": "boneage.train.loop",
    "boneage.sampling": "boneage.train.weighting",
    "boneage.augment": "boneage.train.augment",
    "boneage.metrics": "boneage.train.metrics",
    "boneage.evaluation": "boneage.train.evaluation",
    "boneage.splits": "boneage.train.data",
    "boneage.service": "boneage.serving.handler",
    "boneage.serve": "boneage.serving.app",
    "boneage.webpage": "boneage.serving.webpage",
}


class _OldPathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path to the module at its new one (the same module object, not a copy)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in OLD_PATHS:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(OLD_PATHS[spec.name])

    def exec_module(self, module) -> None:
        pass


def install_old_paths() -> None:
    if not any(isinstance(f, _OldPathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OldPathFinder())  # before the path finder, which would load a second copy
