"""``train_localizers.csv``: the one reader of the competition's aneurysm points, with fixed column types.

Every reader of the file (preprocess cache, EDA, viewer, learned-locator training) calls ``read_localizers``; it
returns one row per point with ``SeriesInstanceUID`` / ``SOPInstanceUID`` / ``location`` as strings (UIDs are never
numbers), the original ``coordinates`` text, and its parsed ``x``, ``y`` (float64 pixel column / row) and ``frame``
(int64, null for a single-frame file). A missing column or a ``coordinates`` value that does not parse is a
``LocalizerError`` naming the file (and the line).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import polars as pl

from kaggle_utils.errors import KitError
from kaggle_utils.schema import ID_COL, LOCALIZER_CSV_COLS, SOP_COL

LOCALIZERS_NAME = "train_localizers.csv"
LOCALIZER_SCHEMA: dict[str, pl.DataType] = {
    ID_COL: pl.Utf8(),
    SOP_COL: pl.Utf8(),
    "coordinates": pl.Utf8(),
    "location": pl.Utf8(),
    "x": pl.Float64(),
    "y": pl.Float64(),
    "frame": pl.Int64(),
}


class LocalizerError(KitError, ValueError):
    """A ``train_localizers.csv`` that lacks a column or holds coordinates that do not parse."""


def parse_coordinates(text: str) -> tuple[float, float, int | None]:
    """``"{'x': 258.3, 'y': 261.4}"`` (optionally with ``'f'``, the 0-based frame) -> (x, y, frame).

    ``ast.literal_eval`` reads the dict literal without evaluating code; a ValueError says what is wrong."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"localizer coordinates {text!r} are not a Python dict literal") from None
    if not isinstance(value, dict) or "x" not in value or "y" not in value:
        raise ValueError(f"localizer coordinates {text!r} lack 'x' or 'y'")
    frame = value.get("f")
    try:
        return float(value["x"]), float(value["y"]), (None if frame is None else int(frame))
    except (TypeError, ValueError):
        raise ValueError(f"localizer coordinates {text!r}: 'x', 'y' (and 'f') must be numbers") from None


def empty_localizers() -> pl.DataFrame:
    return pl.DataFrame(schema=LOCALIZER_SCHEMA)


def read_localizers(data_dir: str | os.PathLike, missing_ok: bool = True) -> pl.DataFrame:
    """``DATA/train_localizers.csv`` as a frame of ``LOCALIZER_SCHEMA`` (empty when the file is missing and
    ``missing_ok``, else a ``LocalizerError``). ``data_dir`` may also be the CSV file itself."""
    path = Path(data_dir)
    if path.is_dir() or not path.suffix:
        path = path / LOCALIZERS_NAME
    if not path.is_file():
        if missing_ok:
            return empty_localizers()
        raise LocalizerError(f"{path} does not exist (is {path.parent} a competition folder?)")
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except pl.exceptions.PolarsError as exc:
        raise LocalizerError(f"{path} is not a readable CSV: {exc}") from None
    missing = [c for c in LOCALIZER_CSV_COLS if c not in raw.columns]
    if missing:
        raise LocalizerError(f"{path} lacks column(s) {missing} (has {raw.columns}; needs {list(LOCALIZER_CSV_COLS)})")
    raw = raw.select(LOCALIZER_CSV_COLS)
    xs, ys, frames = [], [], []
    for line, (uid, text) in enumerate(raw.select(ID_COL, "coordinates").iter_rows(), start=2):
        try:
            if text is None:
                raise ValueError("localizer coordinates are empty")
            x, y, frame = parse_coordinates(text)
        except ValueError as exc:
            raise LocalizerError(f"{path} line {line} (series {uid}): {exc}") from None
        xs.append(x)
        ys.append(y)
        frames.append(frame)
    parsed = pl.DataFrame({"x": xs, "y": ys, "frame": frames}, schema={k: LOCALIZER_SCHEMA[k] for k in ("x", "y",
                                                                                                         "frame")})
    return pl.concat([raw, parsed], how="horizontal")


def series_localizers(localizers: pl.DataFrame, uid: str) -> list[dict]:
    """The rows of one series as dicts (``LOCALIZER_SCHEMA`` keys), in file order."""
    return localizers.filter(pl.col(ID_COL) == uid).to_dicts()


def by_series(localizers: pl.DataFrame) -> dict[str, list[dict]]:
    """uid -> its rows as dicts, in file order."""
    out: dict[str, list[dict]] = {}
    for row in localizers.iter_rows(named=True):
        out.setdefault(row[ID_COL], []).append(row)
    return out
