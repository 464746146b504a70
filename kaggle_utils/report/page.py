"""A report page built once from blocks and written twice: Markdown beside its PNGs, and one self-contained HTML
file with every figure embedded as base64 (it can be mailed or opened offline)."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

from kaggle_utils.io import atomic_write_text
from kaggle_utils.report.figures import png_data_uri

CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code { background: #f5f5f5; padding: 0 3px; }
"""


def fmt_number(value: float | int | None, digits: int = 4) -> str:
    """Numbers for tables: ``n/a`` for a missing value (e.g. an AUC over a single class)."""
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


@dataclass
class Page:
    """An ordered list of blocks: ("heading", level, text), ("text", str), ("table", header, rows),
    ("figure", path, caption)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", list(header), [list(r) for r in rows]))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("figure", Path(path), caption))

    def figures(self) -> list[Path]:
        return [b[1] for b in self.blocks if b[0] == "figure"]

    def to_markdown(self, folder: Path) -> str:
        """Markdown with figure links relative to ``folder`` (where the .md file lives)."""
        lines = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                lines += ["#" * block[1] + " " + block[2], ""]
            elif kind == "text":
                lines += [block[1], ""]
            elif kind == "table":
                header, rows = block[1], block[2]
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731 - one-line escaper
                lines.append("| " + " | ".join(cell(h) for h in header) + " |")
                lines.append("|" + "|".join(["---"] * len(header)) + "|")
                lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif kind == "figure":
                rel = Path(os.path.relpath(block[1], folder)).as_posix()
                lines += [f"![{block[2]}]({rel})", "", f"*{block[2]}*", ""]
        return "\n".join(lines)

    def to_html(self) -> str:
        """One HTML document; figures are ``data:`` URIs, there is no external reference of any kind."""
        esc = html.escape
        parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(self.title)}</title>",
                 f"<style>{CSS}</style>", "</head><body>", f"<h1>{esc(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                parts.append(f"<h{block[1]}>{esc(block[2])}</h{block[1]}>")
            elif kind == "text":
                parts.append(f"<p>{esc(block[1])}</p>")
            elif kind == "table":
                head = "".join(f"<th>{esc(str(h))}</th>" for h in block[1])
                body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif kind == "figure":
                parts.append(f"<figure><img alt='{esc(block[2])}' src='{png_data_uri(block[1])}'>"
                             f"<figcaption>{esc(block[2])}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """Write ``stem.md`` and ``stem.html`` into ``folder``; returns both paths."""
        md = atomic_write_text(folder / f"{stem}.md", self.to_markdown(folder))
        page = atomic_write_text(folder / f"{stem}.html", self.to_html())
        return md, page
