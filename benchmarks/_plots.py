"""Charts for the benchmarks: one row of panels (bars or lines/points) under a title, saved as a PNG.

    bar_chart(path, title, [Bars(names, values, colors, title="tokens/s")])
    line_chart(path, title, [Lines([Series("ours", xs, ys)], xlabel="K", ylabel="s/step")])
    chart(path, title, [Lines(...), Bars(...)])   # mixed panels

matplotlib is imported when a chart is drawn (the Agg backend: no display needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

DPI = 110


@dataclass
class Bars:
    """One bar per label; `colors` is one colour or one per bar."""

    labels: Sequence[str]
    values: Sequence[float]
    colors: Union[str, Sequence[str], None] = None
    title: str = ""
    ylabel: str = ""
    rotation: int = 30

    def draw(self, ax: Any) -> None:
        ax.bar(list(self.labels), list(self.values), color=self.colors)
        if self.title:
            ax.set_title(self.title, fontsize=10)
        if self.ylabel:
            ax.set_ylabel(self.ylabel)
        ax.tick_params(axis="x", rotation=self.rotation)


@dataclass
class Series:
    """One named line (or set of points) of a `Lines` panel."""

    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: Optional[str] = None


@dataclass
class Lines:
    """Series as lines with markers, or as bare points (`points=True`)."""

    series: Sequence[Series]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xlog: bool = False
    ylog: bool = False
    points: bool = False
    extra: dict = field(default_factory=dict)  # passed to plot/scatter, e.g. {"s": 50} or {"linestyle": "--"}

    def draw(self, ax: Any) -> None:
        for line in self.series:
            if self.points:
                ax.scatter(line.xs, line.ys, color=line.color, label=line.label, **self.extra)
            else:
                ax.plot(line.xs, line.ys, marker="o", color=line.color, label=line.label, **self.extra)
        if self.xlog:
            ax.set_xscale("log")
        if self.ylog:
            ax.set_yscale("log")
        if self.title:
            ax.set_title(self.title, fontsize=10)
        if self.xlabel:
            ax.set_xlabel(self.xlabel)
        if self.ylabel:
            ax.set_ylabel(self.ylabel)
        if any(line.label for line in self.series):
            ax.legend(fontsize=8)


def chart(path: Path, title: str, panels: Sequence[Union[Bars, Lines]],
          figsize: Optional[Tuple[float, float]] = None) -> Path:
    """Draw `panels` side by side under `title` and save the figure to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=figsize or (4.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        panel.draw(ax)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return Path(path)


def bar_chart(path: Path, title: str, panels: Sequence[Bars], figsize: Optional[Tuple[float, float]] = None) -> Path:
    """A row of bar panels (`chart` with bars only)."""
    return chart(path, title, panels, figsize)


def line_chart(path: Path, title: str, panels: Sequence[Lines], figsize: Optional[Tuple[float, float]] = None) -> Path:
    """A row of line panels (`chart` with lines only)."""
    return chart(path, title, panels, figsize)
