"""Shared matplotlib helpers: the Agg backend, one figure style, atomic PNG writing and base64 embedding."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from kaggle_utils.io import atomic_path  # noqa: E402

DPI = 110
STYLE = {
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
}
NA_COLOUR = "#d9d9d9"


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1, **kwargs) -> tuple[Figure, np.ndarray]:
    """A figure with the report style and an array of axes (always 2-D-flattened to 1-D)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **kwargs)
    return fig, axes.ravel()


def save_png(fig: Figure, path: str | Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    """Write ``fig`` as a PNG atomically and close it (figures are never kept open between reports).
    ``rect`` is the part of the figure the axes may fill (room for a figure legend or suptitle)."""
    path = Path(path)
    with plt.rc_context(STYLE):
        fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    plt.close(fig)
    return path


def discard(fig: Figure) -> None:
    """Close a figure that is not written (pyplot would otherwise keep it alive)."""
    plt.close(fig)


def png_data_uri(path: str | Path) -> str:
    """The PNG at ``path`` as a ``data:`` URI, so an HTML page carries its figures inside itself."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def short_label(column: str, width: int = 30) -> str:
    """Shorten a label column name for tick labels ("Left Supraclinoid Internal Carotid Artery" -> "L Supraclinoid
    ICA"), cut to ``width`` characters."""
    text = column.replace("Internal Carotid Artery", "ICA").replace("Left ", "L ").replace("Right ", "R ")
    text = text.replace("Communicating Artery", "Comm. A.").replace("Cerebral Artery", "Cerebral A.")
    return text if len(text) <= width else text[: width - 1] + "…"


def integer_ticks(ax, axis: str = "y") -> None:
    """Counts (series, files) get whole-number ticks."""
    from matplotlib.ticker import MaxNLocator

    (ax.yaxis if axis == "y" else ax.xaxis).set_major_locator(MaxNLocator(integer=True))


def colormap_with_na(name: str = "viridis"):
    """A matplotlib colormap that paints masked (n/a) cells light grey."""
    return matplotlib.colormaps[name].with_extremes(bad=NA_COLOUR)


def annotate_heatmap(ax, values: np.ndarray, fmt: str = "{:.2f}", na_text: str = "n/a") -> None:
    """Write each cell's value (or ``na_text`` for NaN) in the cell, dark text on light cells and vice versa."""
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for (i, j), v in np.ndenumerate(values):
        text = na_text if not np.isfinite(v) else fmt.format(v)
        colour = "black" if (not np.isfinite(v) or v >= middle) else "white"
        ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
