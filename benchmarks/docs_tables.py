"""The benchmarks page's tables, made from the dated result files ``benchmarks/results/<date>-<name>.json``.

One table per benchmark (the file's ``benchmark`` field, else the name in its file name), every dated
result of it one or more rows, oldest first. A result file says what it measured in ``title``, ``unit``,
``machine``, ``script`` and ``notes``, and its table rows in ``rows`` (a list of objects: column -> value);
a file without ``rows`` is one row of its top-level figures (nested objects flattened, lists left out).

Used two ways: as an MkDocs hook (``hooks:`` in mkdocs.yml), which replaces the line
``<!-- benchmark-tables -->`` of a page with the tables, and as a script that prints them
(``python benchmarks/docs_tables.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
MARKER = "<!-- benchmark-tables -->"
_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})-(.+)\.json$")
_DESCRIBED = ("benchmark", "title", "date", "label", "script", "machine", "unit", "notes", "rows", "command")


def load_results(folder: Path = RESULTS) -> dict[str, list[dict]]:
    """Every result file, grouped by benchmark, each group oldest first."""
    groups: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*.json")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: result files are named <YYYY-MM-DD>-<name>.json")
        result = json.loads(path.read_text())
        if not isinstance(result, dict):
            raise ValueError(f"{path.name}: a result file holds one JSON object")
        result.setdefault("date", match.group(1))
        result.setdefault("benchmark", match.group(2).split("-")[0])
        result["_file"] = path.name
        groups.setdefault(result["benchmark"], []).append(result)
    for group in groups.values():
        group.sort(key=lambda r: (str(r["date"]), r["_file"]))
    return groups


def _flatten(obj: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name} "))
        elif not isinstance(value, list):
            flat[name] = value
    return flat


def _rows(result: dict) -> list[dict]:
    if isinstance(result.get("rows"), list):
        return result["rows"]
    figures = {k: v for k, v in result.items() if k not in _DESCRIBED and k != "machine" and not k.startswith("_")}
    return [_flatten(figures)]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_table(results: list[dict]) -> str:
    """One Markdown table for one benchmark: a date column, then the union of the results' columns."""
    columns: list[str] = []
    body = []
    for result in results:
        for row in _rows(result):
            for key in row:
                if key not in columns:
                    columns.append(key)
            body.append((result["date"], row))
    lines = ["| date | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for date, row in body:
        lines.append(f"| {date} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _machine(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return str(value)


def render_all(folder: Path = RESULTS) -> str:
    """Every benchmark's section: title, how it was measured, its table, and each result's notes."""
    out = []
    for name, results in sorted(load_results(folder).items()):
        latest = results[-1]
        out.append(f"## {latest.get('title', name)}\n")
        what = [f"Benchmark `{name}`"]
        if latest.get("script"):
            what.append(f"run with `{latest['script']}`")
        if latest.get("command"):
            what.append(f"command `{latest['command']}`")
        para = "; ".join(what) + "."
        if latest.get("unit"):
            para += f" Figures: {latest['unit']}."
        if latest.get("machine"):
            para += f" Machine: {_machine(latest['machine'])}."
        out.append(para + "\n\n" + render_table(results) + "\n")
        notes = [(r["date"], r.get("label"), r["notes"]) for r in results if r.get("notes")]
        for date, label, note in notes:
            out.append(f"- {date}{f' ({label})' if label else ''}: {note}")
        out.append("\nFiles: " + ", ".join(f"`{r['_file']}`" for r in results) + "\n")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    """MkDocs hook: put the tables where the page has the marker line."""
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render_all())


if __name__ == "__main__":
    print(render_all())
