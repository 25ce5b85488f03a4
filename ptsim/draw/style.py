"""One fixed palette for every picture: Okabe and Ito's eight colours, safe for every common
form of colour blindness, each with one meaning throughout the book. Where a colour alone
could be missed, a hatch or a letter says the same thing."""

from __future__ import annotations

from matplotlib.figure import Figure

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

WIDTH = 10.0  # inches: the notebook's width


def process_colour(rank: int) -> str:
    return PROCESS_COLOURS[rank % len(PROCESS_COLOURS)]


def new_figure(ax, height: float):
    """The caller's axes and their figure, or a new figure of the book's width. A new figure
    is not registered with pyplot: returning it displays it once, and nothing leaks."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(WIDTH, height), layout="constrained")
    return fig, fig.add_subplot()


def check_ax(ax) -> None:
    from matplotlib.axes import Axes

    if ax is not None and not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None, not {type(ax).__name__}")
