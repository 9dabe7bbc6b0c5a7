"""The README and the documentation site stay true: the README is short and plain, every `boneage` command
and option it shows exists in the command line, the demo output it quotes is what `make demo` prints, its
links resolve, the site builds strictly, and the benchmark result files render into tables."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAKEFILE = ROOT / "Makefile"


def readme() -> str:
    return README.read_text()


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)


def inline_code(text: str) -> list[str]:
    without_blocks = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [re.sub(r"\s+", " ", span) for span in re.findall(r"`([^`]+)`", without_blocks)]


def boneage_commands(text: str) -> list[list[str]]:
    """Every `boneage SUBCOMMAND ...` the README shows, in code blocks and inline code, as tokens up to the
    end of the command (a comment, a pipe, a redirection or the next shell command)."""
    lines = []
    for block in code_blocks(text):
        lines += block.replace("\\\n", " ").splitlines()
    lines += inline_code(text)
    commands = []
    for line in lines:
        for match in re.finditer(r"(?:^|[\s/])boneage\s+([a-z][a-z-]*)(.*)", line):
            rest = re.split(r"\s#|\s\||\s>|;|&&", match.group(2))[0]
            try:
                tokens = shlex.split(rest)
            except ValueError:
                tokens = rest.split()
            commands.append([match.group(1), *tokens])
    return commands


def options_of(tokens: list[str]) -> list[str]:
    return [t.split("=")[0].rstrip(".,)]") for t in tokens if t.startswith("--")]


@cache
def help_text(subcommand: str | None) -> str:
    args = [sys.executable, "-m", "boneage"] + ([subcommand] if subcommand else []) + ["--help"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, f"{' '.join(args[2:])} failed: {done.stderr[-2000:]}"
    return done.stdout


def subcommands() -> set[str]:
    listed = help_text(None).split("positional arguments:")[1].split("options:")[0]
    return set(re.findall(r"^\s{2,6}([a-z][a-z-]+)\b", listed, flags=re.M)) - {"COMMAND"}


def slug(heading: str) -> str:
    """Python-Markdown's toc slug (what MkDocs and this test agree an anchor is)."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


# --- fast checks: no subprocess -------------------------------------------------------------------------


def test_readme_is_short_and_plain():
    text = readme()
    assert len(text.splitlines()) <= 250
    for pattern, why in ((r"\bseeds?\b", "internal jargon"), (r"\bfounding\b", "internal jargon"),
                         (r"\bissues?\s*#?\d+", "an issue number"), (r"\bhelpers?\b", "internal jargon"),
                         (r"\bstop(s|ped|ping)?\b", "internal jargon"), (r"\bI\b|\bmy\b", "first person")):
        found = re.findall(rf".{{0,30}}{pattern}.{{0,30}}", text, flags=re.I if pattern != r"\bI\b|\bmy\b" else 0)
        assert not found, f"README has {why}: {found}"


def test_readme_embeds_a_figure_of_the_shipped_model():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme())
    assert images, "no figure in the README"
    for image in images:
        assert (ROOT / image).is_file(), image


def test_readme_links_resolve():
    text = readme()
    links = re.findall(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else README
        assert target.exists(), f"README links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+\s+(.+?)\s*$", target.read_text(), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"README links to {link}: no such heading"


USE_PAGES = {"install.md", "predict.md", "score.md", "endpoint.md", "pacs.md", "training.md", "cluster.md",
             "pipeline.md", "model-card.md", "benchmarks.md", "security.md"}


def test_readme_links_the_docs_site_one_page_per_use():
    nav_pages = set(re.findall(r":\s*([\w-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M))
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", readme()))
    assert USE_PAGES <= nav_pages, f"pages missing from the site's nav: {USE_PAGES - nav_pages}"
    assert USE_PAGES <= linked, f"pages the README does not link: {USE_PAGES - linked}"
    assert linked <= nav_pages, f"the README links pages outside the site's nav: {linked - nav_pages}"
    for page in nav_pages:
        assert (ROOT / "docs" / page).is_file(), page


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", MAKEFILE.read_text(), flags=re.M))
    used = set(re.findall(r"\bmake ([a-z][\w-]*)", readme()))
    assert {"demo", "test"} <= used
    assert used <= targets, f"the README names make targets the Makefile lacks: {used - targets}"


def demo_recipe() -> str:
    match = re.search(r"^demo:.*\n\t(.+)$", MAKEFILE.read_text(), flags=re.M)
    assert match, "the Makefile has no demo recipe"
    return match.group(1)


DEMO_LINE = re.compile(r"^(examples/\d+\.png): (\d+\.\d) months \((\d+) y (\d+) m\), sex ([MF]); "
                       r"90% interval (\d+\.\d)-(\d+\.\d)$")


def readme_demo_output() -> list[str]:
    """The lines of the README's block that shows `make demo`'s output."""
    text = readme()
    blocks = [b for b in code_blocks(text) if "examples/0.png" in b]
    assert len(blocks) == 1, "the README shows the demo's output in one block"
    return [line for line in blocks[0].splitlines() if line.strip() and line.strip() != "..."]


def test_readme_says_what_make_demo_runs():
    recipe = demo_recipe()
    command = re.search(r"boneage (predict [^`]+?)`", readme())
    assert command, "the README says which command make demo runs"
    shown = command.group(1).split()
    assert " ".join(shown) in recipe.replace("$(BIN)/boneage ", "").replace("  ", " "), (shown, recipe)


def test_readme_demo_output_is_what_predict_prints():
    """Each quoted line is re-made by the code that prints it, from the values the line shows."""
    from boneage.cli import _row_text
    from boneage.clinical import RESEARCH_USE_ONLY
    from boneage.predict.predictor import Prediction, years_months

    lines = readme_demo_output()
    assert lines[0] == RESEARCH_USE_ONLY
    results = lines[1:]
    assert len(results) >= 2
    for line in results:
        match = DEMO_LINE.match(line)
        assert match, f"not the shape predict prints: {line!r}"
        path, months, _, _, sex, low, high = match.groups()
        assert float(low) <= float(months) <= float(high)
        row = Prediction(path=path, id=Path(path).stem, sex=sex, bone_age_months=float(months),
                         bone_age_years_months=years_months(float(months)), quality={"verdict": "ok"},
                         bone_age_interval_low=float(low), bone_age_interval_high=float(high), interval_level=0.9)
        assert _row_text(row) == line
        assert (ROOT / path).is_file()


def test_benchmark_results_are_dated_json_and_render_one_table_per_benchmark():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import docs_tables
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    files = sorted((ROOT / "benchmarks" / "results").iterdir())
    assert files
    for path in files:
        assert re.match(r"^\d{4}-\d{2}-\d{2}-[\w.-]+\.json$", path.name), f"{path.name}: not <date>-<name>.json"
        assert isinstance(json.loads(path.read_text()), dict)
    groups = docs_tables.load_results()
    page = docs_tables.render_all()
    for name, results in groups.items():
        assert f"`{name}`" in page
        rows = sum(len(docs_tables._rows(r)) for r in results)
        table = docs_tables.render_table(results)
        assert len(table.splitlines()) == rows + 2, name
    assert "preprocess_stages" in groups and len(groups["preprocess_stages"]) >= 2
    assert docs_tables.MARKER in (ROOT / "docs" / "benchmarks.md").read_text()
    assert docs_tables.on_page_markdown(f"x\n{docs_tables.MARKER}\n", None, None, None).count("| date |") == len(groups)


def pyproject_list(name: str) -> list[str]:
    """The strings of one list of pyproject.toml, comments left out (tomllib is not in Python 3.10)."""
    match = re.search(rf"^{name}\s*=\s*\[(.*?)\]\s*$", (ROOT / "pyproject.toml").read_text(), flags=re.M | re.S)
    assert match, name
    return re.findall(r'"([^"]+)"', re.sub(r"#[^\n]*", "", match.group(1)))


def test_licence_file_matches_pyproject():
    licence = re.search(r'^license\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), flags=re.M).group(1)
    text = (ROOT / "LICENSE").read_text()
    assert licence == "MIT" and text.startswith("MIT License"), (licence, text[:40])


def test_ci_builds_the_docs_strictly_and_checks_a_stock_resolution():
    ci = (ROOT / ".ci" / "run").read_text()
    makefile = MAKEFILE.read_text()
    assert "make docs" in ci and re.search(r"^docs:.*\n\t.*mkdocs build --strict", makefile, flags=re.M)
    assert "check_resolution.sh" in ci
    assert "install_test_packages.sh" in ci
    assert any(d.startswith("mkdocs-material") for d in pyproject_list("dev"))
    dependencies = pyproject_list("dependencies")
    assert any(d.startswith("s3fs") for d in dependencies) and any(d.startswith("torch") for d in dependencies)
    # boto3 named directly made a stock pip backtrack into ResolutionImpossible (s3fs pins botocore)
    assert not any(re.match(r"boto3\b", d) for d in dependencies)


# --- through the command line and MkDocs (subprocesses) -------------------------------------------------


@pytest.mark.integration
def test_every_boneage_command_and_option_in_the_readme_exists():
    commands = boneage_commands(readme())
    assert len({c[0] for c in commands}) >= 6, commands
    known = subcommands()
    assert {"predict", "score", "serve", "listen", "train", "evaluate", "report"} <= known
    for subcommand, *tokens in commands:
        assert subcommand in known, f"the README shows `boneage {subcommand}`, which does not exist"
        text = help_text(subcommand)
        for option in options_of(tokens):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), \
                f"the README shows `boneage {subcommand} {option}`, which `boneage {subcommand} --help` lacks"
    # options the README names on their own exist in some command
    every_help = "\n".join(help_text(s) for s in known)
    for span in inline_code(readme()):
        if span.startswith("--"):
            option = span.split()[0].split("=")[0]
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", every_help), option


@pytest.mark.integration
def test_make_demo_prints_what_the_readme_shows(tmp_path):
    """The demo's own command (the Makefile's recipe, into a temporary folder): every line the README quotes
    comes out, in the same shape, with bone ages within a month (bf16 and float32 CPUs differ slightly)."""
    recipe = demo_recipe().replace("$(BIN)/boneage", "").replace("out/demo-preprocessed", str(tmp_path / "pre"))
    args = shlex.split(recipe)
    films = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.png"))
    args = [a for arg in args for a in (films if arg == "examples/*.png" else [arg])]
    done = subprocess.run([sys.executable, "-m", "boneage", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    quoted = readme_demo_output()
    assert done.stderr.splitlines()[0] == quoted[0]
    printed = {DEMO_LINE.match(line).group(1): DEMO_LINE.match(line) for line in done.stdout.splitlines()
               if DEMO_LINE.match(line)}
    assert len(printed) == len(films), done.stdout
    for line in quoted[1:]:
        want = DEMO_LINE.match(line)
        got = printed[want.group(1)]
        for i in (2, 6, 7):
            assert abs(float(got.group(i)) - float(want.group(i))) <= 1.0, (line, got.group(0))
    assert len(list((tmp_path / "pre").glob("*.png"))) == len(films)


@pytest.mark.integration
def test_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs", reason="the dev extra installs mkdocs (pip install -e '.[dev]')")
    pytest.importorskip("material", reason="the dev extra installs mkdocs-material")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert benchmarks.count("<table>") >= 5
    assert (tmp_path / "site" / "figures" / "hires-scatter.png").is_file()


@pytest.mark.integration
def test_the_skipped_test_counts_the_readme_gives_are_true():
    """The README says how many tests `make test` skips without Orthanc and Chromium: the PACS tests (every
    test of the two PACS modules) and the one browser test."""
    modules = ["tests/files/test_dicomweb.py", "tests/jobs/test_listen.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *modules],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    pacs = len([line for line in done.stdout.splitlines() if "::" in line])
    assert pacs > 0, done.stdout[-2000:]
    assert "def test_web_page_in_headless_chromium" in (ROOT / "tests" / "serving" / "test_serve.py").read_text()
    flat = re.sub(r"\s+", " ", readme().replace("**", ""))
    assert f"skips {pacs + 1} tests" in flat and f"the {pacs} PACS tests" in flat, (pacs, flat[:3000])
    assert f"{pacs} tests" in (ROOT / "docs" / "install.md").read_text()
