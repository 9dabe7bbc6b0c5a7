"""The package's layers point one way. The rule, stated once:

A module may import only modules of its own stage or of an earlier one, in the order a film travels:
base -> files -> prepare -> network -> clinical -> predict -> train -> serving -> jobs -> cli; the
library never imports the entry layer (``ray_jobs``); and no import cycle exists anywhere, even inside a
stage. The cores a film passes through (``prepare``, ``network``, ``clinical``) never import Ray: Ray is a
thin layer over them. Imports inside functions count too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import ROOT

STAGES = ["base", "files", "prepare", "network", "clinical", "predict", "train", "serving", "jobs", "cli", "ray_jobs"]
BASE = {"boneage", "boneage.errors", "boneage.configs", "boneage.devices", "boneage.logs",
        "boneage.progress", "boneage.raycluster"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    if module in BASE:
        return "base"
    if module.startswith("ray_jobs"):
        return "ray_jobs"
    if module in ("boneage.cli", "boneage.__main__"):
        return "cli"
    return module.split(".")[1]


def all_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (``from a import b`` counts ``a`` and ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (``from a import b`` counts ``a.b`` when ``b`` is a module)."""
    return {m for m in all_imports(path) if m in known}


def graph() -> dict[str, set[str]]:
    paths = [*ROOT.joinpath("boneage").rglob("*.py"), *ROOT.joinpath("ray_jobs").rglob("*.py")]
    known = {module_name(p) for p in paths}
    return {module_name(p): imports(p, known) - {module_name(p)} for p in paths}


def test_every_module_has_a_known_stage():
    assert {stage(m) for m in graph()} <= set(STAGES)


def test_no_module_imports_a_later_stage():
    wrong = [f"{m} ({stage(m)}) imports {d} ({stage(d)})" for m, deps in graph().items() for d in deps
             if STAGES.index(stage(d)) > STAGES.index(stage(m)) and d != "boneage"]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = graph()
    g = {m: {d for d in deps if d != "boneage"} for m, deps in g.items()}  # the package root is base
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*trail[trail.index(dep):], dep]))
            elif dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for module in sorted(g):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


RAY_FREE = ("prepare", "network", "clinical")


def test_the_cores_never_import_ray():
    paths = [p for stage in RAY_FREE for p in ROOT.joinpath("boneage", stage).rglob("*.py")]
    assert len(paths) > len(RAY_FREE)
    wrong = [f"{module_name(p)} imports {m}" for p in paths for m in sorted(all_imports(p))
             if m == "ray" or m.startswith("ray.")]
    assert not wrong, "\n".join(wrong)
