"""One fixed palette for every picture: Okabe and Ito's eight colours, safe for every common
form of colour blindness, each with one meaning throughout the book. Where a colour alone
could be missed, a hatch or a letter says the same thing."""

from __future__ import annotations

from functools import lru_cache

from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

BLACK = "#000000"
ORANGE = "#E69F00"
SKY_BLUE = "#56B4E9"
GREEN = "#009E73"
YELLOW = "#F0E442"
BLUE = "#0072B2"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#999999"
LIGHT = "#F2F2F2"
INK = "#333333"

SHARED = ORANGE  # a table or frame used by several: the thing to look at
WRPROTECT = VERMILLION  # RW clear for copy-on-write
WRITABLE = SKY_BLUE  # RW set
TABLE_PTR = "#D9D9D9"  # an upper entry pointing at the next table
ZERO = YELLOW
ANON = GREEN
SHMEM = BLUE
HIGHLIGHT = PURPLE  # what a traced call touched
PROCESS_COLOURS = (BLUE, GREEN, PURPLE, SKY_BLUE, "#7F3C8D", "#11A579", "#3969AC", "#80BA5A")

WIDTH = 8.8  # inches: with the tight box's padding, 9 inches: 900 px at DPI, the output width (below)


def process_colour(rank: int) -> str:
    return PROCESS_COLOURS[rank % len(PROCESS_COLOURS)]


def new_figure(ax, height: float, width: float = WIDTH):
    """The caller's axes and their figure, or a new figure (of the book's width unless told).
    A new figure is not registered with pyplot: returning it displays it once, and nothing
    leaks."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def check_ax(ax) -> None:
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None, not {type(ax).__name__}")


# -- readable at the notebook's width ---------------------------------------------------------
# The rule every picture keeps: no text smaller than 80 % of the body text, as shown.
# JupyterLab's body text is 14 px (--jp-content-font-size1 in its themes). matplotlib-inline
# (0.2) displays a figure as a PNG saved at the figure's dpi (rcParams' 100: it sets no dpi of
# its own) with bbox_inches="tight" (0.1 inch of padding each side); the output area shows it
# at its size in pixels, scaled down to fit when it is wider. The output area is taken to be
# 900 px wide: the browser test's 1400-px window (tests/browser) with JupyterLab's file browser
# open (about 300 px), less the 64-px prompt and the paddings, leaves about 950 px; 900 leaves
# room for a smaller laptop screen. So text of f points, in a figure whose tight box is W
# inches at d dpi, shows at f*d/72 * min(1, 900/(W*d)) px, and must show at 11.2 px or more.
BODY_PX = 14.0
MIN_PX = 0.8 * BODY_PX
OUTPUT_PX = 900.0
DPI = 100.0  # rcParams["figure.dpi"]: what the notebooks' figures are saved at
PAD = 0.1  # inches each side: savefig's pad_inches with bbox_inches="tight"


SMALL = 8.5  # points: the smallest text of a figure at most 9 inches wide (tight): 11.8 px
TEXT = 9.5  # points: labels that may be larger


def shown_px(points: float, width: float, dpi: float = DPI, box: float = OUTPUT_PX, fill: bool = False) -> float:
    """How tall text of `points` shows, in CSS px, in a picture `width` inches wide (its
    tight box) saved at `dpi` and shown in `box` px: scaled down to fit if wider, or (`fill`,
    as a widget's picture is, at 100 % of its box) scaled to the box's width either way."""
    scale = box / (width * dpi)
    return points * dpi / 72 * (scale if fill else min(1.0, scale))


def smallest_points(fig) -> float:
    """The smallest font size (points) readable in `fig` when the notebook shows it: its tight
    box taken as the whole figure and the padding (text inside a constrained layout reaches
    no further)."""
    return MIN_PX / shown_px(1.0, fig.get_figwidth() + 2 * PAD, fig.dpi)


class _Recorder(RendererAgg):
    """Draws as Agg does, and keeps every text it draws with its size in points: tick labels,
    legends, annotations, table cells, whatever the artist."""

    def __init__(self, width, height, dpi):
        super().__init__(width, height, dpi)
        self.texts = []

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if s.strip():
            self.texts.append((s, prop.get_size_in_points()))
        return super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)


def shown_texts(fig, box: float | None = None) -> list[tuple[str, float]]:
    """(text, px) for every text `fig` draws, as the reader sees it. box None: as the notebook
    shows a figure (its tight box plus padding at its dpi, scaled down to the output's width);
    a number: as a widget shows its picture (saved at the figure's dpi, 100 % of `box` px)."""
    width, height = fig.get_size_inches()
    renderer = _Recorder(width * fig.dpi, height * fig.dpi, fig.dpi)
    fig.draw(renderer)
    if box is None:
        tight = fig.get_tightbbox(renderer).width + 2 * PAD
        return [(s, shown_px(pt, tight, fig.dpi)) for s, pt in renderer.texts]
    return [(s, shown_px(pt, width, fig.dpi, box, fill=True)) for s, pt in renderer.texts]


_TO_PATH = TextToPath()


@lru_cache(maxsize=8192)
def text_width(text: str, size: float, weight: str = "normal") -> float:
    """Points: the width of one line of `text` at `size` points in the figures' font."""
    width, _, _ = _TO_PATH.get_text_width_height_descent(text, FontProperties(size=size, weight=weight), ismath=False)
    return width


def legend(where, handles, **kw) -> None:
    """A legend under the picture, at a readable size, in as many columns as fit the width.
    `where`: the axes, or a figure of several axes (then `loc` is given)."""
    if not handles:
        return
    axes = hasattr(where, "transAxes")
    fig = where.figure if axes else where
    size = max(SMALL, smallest_points(fig))
    room = 72 * fig.get_figwidth() * (where.get_position().width if axes else 1.0)
    widest = max(text_width(h.get_label(), size) for h in handles) + 4 * size  # the patch and the gaps
    ncol = max(1, min(len(handles), int(room // widest)))
    if "loc" not in kw:
        kw = {"loc": "upper center", "bbox_to_anchor": (0.5, 0.0), **kw}
    where.legend(handles=handles, ncol=ncol, fontsize=size, frameon=False, **kw)
