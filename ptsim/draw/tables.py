"""The page-table picture: processes -> tables level by level -> data frames.

Rows, top to bottom: the processes, one row per table level, the frames. Each table is a
header (its level, frame and use count) over a row of entry cells; a line runs from each
entry to what it points at. The layout is computed from the tree, never at random: each row
keeps the order in which a walk meets its boxes, and the boxes are placed as near as their
spacing allows to the mean of their parents' entries (then of their children, then of the
parents again), so a table several processes share lands between its sharers. The placing
within a row is an isotonic regression (pool adjacent violators): the positions nearest in
the least-squares sense to the wanted ones that keep the order and the spacing.

Big geometries are summarised: runs of consecutive entries alike (same state, RW, kind of
page, mapcount) become one cell, runs of empty entries a narrow gap, the frames of a run one
box ("512 anon pages"), and consecutive last-level tables that each hold one such run, with
the same use count and sharers, one box ("32 pte tables").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Real

import networkx as nx
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.patches import Patch, Rectangle

from . import style
from .graph import kernel_of, table_graph

HEAD = 1.7  # height of a table's header band (three lines), in cell units
CELL = 1.1  # height of an entry cell (two lines)
PROC = 1.2  # height of a process's box
ARROWS = 1.1  # room between two rows, for the lines from entries to what they point at
GAP = 0.7  # least room between two boxes of a row
FULL_TABLE = 16  # tables this wide or narrower are drawn entry by entry unless told to collapse
GROUP = 2  # consecutive alike last-level tables summarised as one box, from this many on
RO_TINT = "#F0C7A6"  # vermillion at 35%: dark text stays readable on it
UNIT = 23.0  # points per cell unit upright in a new figure: room for two lines of text in a cell


@dataclass
class Cell:
    lo: int  # first and last entry index the cell stands for
    hi: int
    state: str  # "empty", "gap" (a run of empty entries, summarised), "table", "page", "none" (PROT_NONE), "swap"
    width: float
    child: tuple | None = None
    rw: bool = False
    cow: bool = False
    offset: float = 0.0  # of the cell's centre from its box's centre
    highlight: bool = False


@dataclass
class Box:
    key: tuple  # a graph node, or ("tables" | "frames" | "slots", pfns) for a summary
    row: int
    width: float
    cells: list[Cell] = field(default_factory=list)
    parents: list[tuple[Box, float]] = field(default_factory=list)
    x: float = 0.0
    highlight: bool = False

    @property
    def pfns(self) -> tuple:
        """The frames (or swap slots) the box stands for."""
        return self.key[1] if isinstance(self.key[1], tuple) else (self.key[1],)


def page_tables(machine, processes=None, *, ax=None, collapse=None, highlight=None, title=None, width=None):
    """Draw the page tables of `processes` (default: every live one) and return the Figure.

    collapse: None picks by geometry (entry by entry for `toy`, summarised for x86_64 and
    i386); True or False forces it. highlight: Events (from `with m.trace() as ev:`) whose
    tables, entries and frames get a purple outline. width: of a new figure, in inches
    (default: the book's width). A text that cannot fit its box at a readable size
    (`style.smallest_points`) is shortened, or left out.
    """
    k = kernel_of(machine)
    style.check_ax(ax)
    if collapse is not None and not isinstance(collapse, bool):
        raise ValueError(f"collapse must be None, True or False, not {collapse!r}")
    events = events_of(highlight)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a str or None, not {type(title).__name__}")
    if width is not None and (not isinstance(width, Real) or isinstance(width, bool) or not 2 <= width <= 30):
        raise ValueError(f"width must be None or a number of inches from 2 to 30, not {width!r}")
    return render(table_graph(machine, processes), k.arch, ax=ax, collapse=collapse, events=events, title=title,
                  width=style.WIDTH if width is None else float(width))


def figure_height(arch) -> float:
    """Inches: the rows of a picture of `arch`'s tables at UNIT points per cell unit, and
    room for a title and a legend."""
    units = PROC + (arch.levels + 1) * (HEAD + CELL + ARROWS) + 0.8
    return units * UNIT / 72 + 1.6


def render(g: nx.DiGraph, arch, *, ax=None, collapse=None, events=None, title=None, width=style.WIDTH):
    """Draw a graph `table_graph` made (perhaps before the machine changed); return the Figure."""
    fig, ax = style.new_figure(ax, height=figure_height(arch), width=width)
    used = draw_graph(ax, g, arch, collapse=collapse, events=events, title=title)
    legend(ax, used)
    return fig


def legend(where, used: set[str], **kw) -> None:
    """The legend of what was drawn (`style.legend`)."""
    style.legend(where, legend_handles(used), **kw)


def draw_graph(ax, g: nx.DiGraph, arch, *, collapse=None, events=None, title=None, pens=None) -> set[str]:
    """Draw into `ax`; return the legend keys of what was drawn, for `legend_handles`.

    With a list `pens`, the text is not written but its pen appended, for the caller to write
    several pictures' text at one size per kind (`write_alike`)."""
    if collapse is None:
        collapse = arch.entries > FULL_TABLE
    if title is None:
        pids = ", ".join(str(p) for p in g.graph["pids"])
        title = f"page tables of pid {pids} ({arch.name}, policy {g.graph['policy']})"
    rows = _boxes(g, arch, collapse)
    ax.axis("off")
    ax.set_title(title, fontsize=max(10.0, style.smallest_points(ax.figure)))
    if not rows:
        ax.text(0.5, 0.5, "no live process", ha="center", va="center", transform=ax.transAxes)
        return set()
    _mark(g, arch, rows, events)
    _layout(rows)
    used, pen = _draw(ax, g, rows)
    if pens is None:
        pen.write(pen.sizes())
    else:
        pens.append(pen)
    if any(b.highlight or any(c.highlight for c in b.cells) for row in rows for b in row):
        used.add("highlight")
    return used


def events_of(events, name: str = "highlight"):
    """`events` as a list of Events (one Event, or None, allowed); anything else is refused."""
    from ..kernel.trace import Event

    if events is None:
        return None
    if isinstance(events, Event):
        events = [events]
    if isinstance(events, (str, bytes)) or not hasattr(events, "__iter__"):
        raise ValueError(f"{name} must be a list of ptsim Events or None, not {type(events).__name__}")
    events = list(events)
    if not all(isinstance(e, Event) for e in events):
        raise ValueError(f"{name} must hold ptsim Events only")
    return events


# -- the boxes and their cells ----------------------------------------------------------------


def _boxes(g: nx.DiGraph, arch, collapse: bool) -> list[list[Box]]:
    """The boxes row by row, each row in the order a walk from the processes meets them."""
    frames_row = arch.levels + 1
    rows: list[list[Box]] = [[] for _ in range(frames_row + 1)]
    made: dict[tuple, Box] = {}
    cells_of: dict[tuple, list[Cell]] = {}

    def cells(node) -> list[Cell]:
        if node not in cells_of:
            cells_of[node] = _cells(g, node, arch, collapse)
        return cells_of[node]

    def box(key, row, width):
        if key not in made:
            made[key] = Box(key, row, width)
            rows[row].append(made[key])
        return made[key]

    for pid in g.graph["pids"]:
        proc = box(("proc", pid), 0, 3.0)
        pgd = ("table", g.nodes[("proc", pid)]["pgd"])
        proc.cells = [Cell(0, 0, "proc", 3.0, pgd)]
        stack = [pgd]
        while stack:
            node = stack.pop()
            if node in made:
                continue
            if node[0] == "tables":
                b = box(node, arch.levels, 0)
                b.cells = [_group_cell([cells(("table", t)) for t in node[1]])]
            else:
                b = box(node, g.nodes[node]["level"] + 1, 0)
                b.cells = cells(node)
                if collapse and g.nodes[node]["level"] == arch.levels - 2:
                    b.cells = _group_tables(g, b.cells, cells, arch)
            b.width = max(sum(c.width for c in b.cells), 0.3 * max(map(len, _header(g, b))) if collapse else 0)
            children = []
            for c in b.cells:
                if c.child is None:
                    continue
                if c.child[0] in ("table", "tables"):
                    children.append(c.child)
                else:
                    box(c.child, frames_row, 4.0 if c.child[0] in ("frames", "slots") else 3.0)
            stack.extend(reversed(children))
    for row in rows:
        for b in row:
            if not b.cells:
                continue
            stretch = b.width / sum(c.width for c in b.cells)  # header wider than the cells: widen them
            left = -b.width / 2
            for c in b.cells:
                c.width *= stretch
                c.offset = left + c.width / 2
                left += c.width
                if c.child is not None:
                    made[c.child].parents.append((b, c.offset))
    rows = [r for r in rows if r]
    for r, row in enumerate(rows):
        for b in row:
            b.row = r
    return rows


def _cells(g: nx.DiGraph, node, arch, collapse: bool) -> list[Cell]:
    leaf = g.nodes[node]["level"] == arch.levels - 1
    by_index = {}
    for _, child, e in g.out_edges(node, data=True):
        for i in e["indexes"]:
            by_index[i] = (child, e)
    if not collapse and arch.entries <= FULL_TABLE:
        return [_entry_cell(i, by_index.get(i), leaf, 1.0) for i in range(arch.entries)]
    cells: list[Cell] = []
    runs: dict[int, list] = {}  # id of a run's cell -> its children, in entry order
    previous = -1
    for i in sorted(by_index):
        if i > previous + 1:
            cells.append(Cell(previous + 1, i - 1, "gap", 0.5))
        cell = _entry_cell(i, by_index[i], leaf, 1.2)
        last = cells[-1] if cells else None
        if collapse and leaf and last is not None and last.hi == i - 1 and _alike(g, last, cell):
            last.hi = i
            runs.setdefault(id(last), [last.child]).append(cell.child)
        else:
            cells.append(cell)
        previous = i
    if previous < arch.entries - 1:
        cells.append(Cell(previous + 1, arch.entries - 1, "gap", 0.5))
    for c in cells:  # a run of frames becomes one box; the zero page stays one frame
        if id(c) in runs:
            children = runs[id(c)]
            if len(set(children)) > 1:
                c.child = ("slots" if c.state == "swap" else "frames", tuple(n[1] for n in children))
            c.width = 2.4
    return cells


def _entry_cell(index, target, leaf, width) -> Cell:
    if target is None:
        return Cell(index, index, "empty", width)
    child, e = target
    state = "table" if not leaf else ("swap" if child[0] == "swap" else ("page" if e["present"] else "none"))
    return Cell(index, index, state, width, child, e["rw"], e["cow"])


def _alike(g: nx.DiGraph, run: Cell, cell: Cell) -> bool:
    """Entries one summary cell can stand for: same state, RW, copy-on-write, kind of frame
    (the zero page is a kind of its own) and mapcount."""
    if run.state != cell.state or run.rw != cell.rw or run.cow != cell.cow:
        return False
    a, b = g.nodes[run.child], g.nodes[cell.child]
    return a["kind"] == b["kind"] and a.get("mapcount") == b.get("mapcount")


def _group_tables(g: nx.DiGraph, cells: list[Cell], cells_of, arch) -> list[Cell]:
    """Merge runs of consecutive entries of a pmd that point at last-level tables each made
    of one run of entries alike, all alike, with the same use count and sharers."""

    def whole(c: Cell):
        if c.state != "table":
            return None
        inner = cells_of(c.child)
        if len(inner) != 1 or inner[0].state not in ("page", "swap") or (inner[0].lo, inner[0].hi) != (0, arch.entries - 1):
            return None
        t = g.nodes[c.child]
        run = inner[0]
        first = run.child if run.child[0] in ("frame", "swap") else ("swap" if run.state == "swap" else "frame", run.child[1][0])
        return c.rw, c.cow, t["use_count"], t["sharers"], run.state, run.rw, run.cow, g.nodes[first]["kind"], g.nodes[first].get("mapcount")

    out: list[Cell] = []
    i = 0
    while i < len(cells):
        j, key = i + 1, whole(cells[i])
        while key is not None and j < len(cells) and cells[j].lo == cells[j - 1].hi + 1 and whole(cells[j]) == key:
            j += 1
        if key is not None and j - i >= GROUP:
            first = cells[i]
            out.append(Cell(first.lo, cells[j - 1].hi, "table", 3.0, ("tables", tuple(c.child[1] for c in cells[i:j])), first.rw, first.cow))
        else:
            out.extend(cells[i:j])
        i = j
    return out


def _group_cell(inner: list[list[Cell]]) -> Cell:
    """The one cell of a box of grouped tables: their runs, end to end."""
    first = inner[0][0]
    children = [c[0].child for c in inner]
    if all(ch == children[0] for ch in children):  # all the zero page
        child = children[0]
    else:
        kind = "slots" if first.state == "swap" else "frames"
        child = (kind, tuple(p for ch in children for p in (ch[1] if isinstance(ch[1], tuple) else (ch[1],))))
    return Cell(0, len(inner) * (first.hi + 1) - 1, first.state, 4.0, child, first.rw, first.cow)


def _mark(g: nx.DiGraph, arch, rows, events) -> None:
    """Outline what the events name: their tables and frames, the entry each one changed
    (the cell of its table that covers its address and points at its frame), and the
    entries of the acting process that point at a table the event names."""
    if not events:
        return
    tables = {e.table for e in events if e.table is not None}
    tables |= {e.frame for e in events if e.frame is not None and ("table", e.frame) in g}
    frames = {e.frame for e in events if e.frame is not None} | {e.detail["from"] for e in events if "from" in e.detail}
    slots = {e.detail["slot"] for e in events if "slot" in e.detail}
    for row in rows:
        for b in row:
            if b.key[0] in ("table", "tables"):
                b.highlight = not tables.isdisjoint(b.pfns)
            elif b.key[0] in ("swap", "slots"):
                b.highlight = not slots.isdisjoint(b.pfns)
            elif b.key[0] != "proc":
                b.highlight = not frames.isdisjoint(b.pfns)
    for row in rows:
        for b in row:
            if b.key[0] not in ("table", "tables"):
                continue
            node = g.nodes[("table", b.pfns[0])]
            for c in (c for c in b.cells if c.child is not None):
                pointed = set(c.child[1]) if isinstance(c.child[1], tuple) else {c.child[1]}
                for e in events:
                    entry_changed = (e.table in b.pfns and e.addr is not None and e.frame in pointed
                                     and (b.key[0] == "tables" or c.lo <= arch.index(node["level"], e.addr) <= c.hi))
                    table_named = c.state == "table" and e.pid in node["sharers"] and not pointed.isdisjoint({e.table, e.frame})
                    if entry_changed or table_named:
                        c.highlight = True
                        break


# -- placing the boxes -------------------------------------------------------------------------


def _layout(rows: list[list[Box]]) -> None:
    boxes = {b.key: b for row in rows for b in row}
    _place(rows[0], [0.0] * len(rows[0]))
    for sweep, order in enumerate(("down", "up", "down")):
        for r in range(1, len(rows)) if order == "down" else range(len(rows) - 2, -1, -1):
            row = rows[r]
            if order == "down":
                wanted = [np.mean([p.x + off for p, off in b.parents]) for b in row]
            else:
                wanted = [np.mean([boxes[c.child].x - c.offset for c in kids]) if kids else b.x
                          for b in row for kids in [[c for c in b.cells if c.child is not None]]]
            if sweep == 0:  # the first pass fixes each row's order: the walk's, stably sorted by position
                order_ = sorted(range(len(row)), key=lambda i: wanted[i])
                row[:] = [row[i] for i in order_]
                wanted = [wanted[i] for i in order_]
            _place(row, wanted)
    left = min(b.x - b.width / 2 for b in boxes.values())
    for b in boxes.values():
        b.x -= left


def _place(row: list[Box], wanted) -> None:
    """Positions nearest `wanted` (least squares) keeping the row's order and spacing."""
    least = np.zeros(len(row))
    for i in range(1, len(row)):
        least[i] = least[i - 1] + (row[i - 1].width + row[i].width) / 2 + GAP
    blocks: list[list[float]] = []  # pool adjacent violators: [sum, count] per block
    for t in np.asarray(wanted, dtype=float) - least:
        blocks.append([t, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += n
    xs = np.concatenate([np.full(n, s / n) for s, n in blocks]) + least
    for b, x in zip(row, xs):
        b.x = float(x)


# -- drawing -----------------------------------------------------------------------------------

_LEGEND = {
    "table": (style.TABLE_PTR, style.INK, None, 0.6, "entry -> next-level table"),
    "rw": (style.WRITABLE, style.INK, None, 0.6, "entry maps a page, RW=1"),
    "cow": (RO_TINT, style.WRPROTECT, "////", 0.6, "RW=0: write-protected (copy-on-write)"),
    "ro": ("#CCCCCC", style.INK, None, 0.6, "RW=0: read-only mapping"),
    "none": ("white", style.GREY, "xx", 0.6, "PROT_NONE: P=0, page kept, no access"),
    "swap": ("white", style.GREY, "..", 0.6, "swap entry: the page is out"),
    "slot": ("white", style.INK, None, 0.6, "swap slot (dashed)"),
    "shared_table": (style.SHARED, style.SHARED, None, 2.4, "shared table (use count > 1)"),
    "anon": (style.ANON, style.INK, None, 0.6, "anonymous page"),
    "zero": (style.ZERO, style.INK, None, 0.6, "the zero page"),
    "shmem": (style.SHMEM, style.INK, None, 0.6, "MAP_SHARED (shmem) page"),
    "mapcount": ("white", style.SHARED, None, 2.4, "page mapped by several entries (mapcount > 1)"),
    "highlight": ("white", style.HIGHLIGHT, None, 2.6, "touched by the call"),
}


def legend_handles(used: set[str]) -> list[Patch]:
    return [Patch(facecolor=face, edgecolor=edge, hatch=hatch, linewidth=lw, label=label)
            for key, (face, edge, hatch, lw, label) in _LEGEND.items() if key in used]


class _Pen:
    """Writes text in boxes, one size and one form per kind of text (headers, cells,
    frames...), so that alike things read alike: each text comes with shorter forms, and a
    kind is written in its longest forms that every text of the kind fits at a readable size
    (`style.smallest_points`), as large as they fit. Where even the shortest forms do not all
    fit, they are written at the smallest readable size, and a text that does not fit its
    box is left out (the colours and the legend still tell)."""

    WANTED = {"proc": 10.0, "head": 9.5, "cell": 9.5, "gap": 9.5, "frame": 9.5}  # the largest wanted

    def __init__(self, ax, width: float, height: float):
        pos = ax.get_position()
        self.ax = ax
        self.x = 72 * ax.figure.get_figwidth() * pos.width / width  # points per cell unit
        self.y = 72 * ax.figure.get_figheight() * pos.height / height
        self.least = style.smallest_points(ax.figure) * 1.01
        self.texts: list[tuple] = []

    def text(self, kind: str, x, y, forms: list[list[str]], w: float, h: float, **kw) -> None:
        """`forms`: the text's lines, then shorter forms of them, longest first."""
        self.texts.append((kind, x, y, forms, w, h, kw))

    def _fits(self, lines: list[str], size: float, w: float, h: float, weight: str) -> bool:
        return (max(style.text_width(s, size, weight) for s in lines) <= 0.9 * w * self.x
                and 1.25 * size * len(lines) <= 0.9 * h * self.y)

    def _fit(self, lines: list[str], w: float, h: float, weight: str) -> float:
        """The largest size (up to any kind's wanted one) at which `lines` fit a w x h box."""
        top = max(self.WANTED.values())
        return min(top * 0.9 * w * self.x / max(style.text_width(s, top, weight) for s in lines), 0.9 * h * self.y / (1.25 * len(lines)))

    def sizes(self) -> dict[str, tuple[float, int]]:
        """Per kind: (size, which form: 0 the longest)."""
        chosen = {}
        for kind, wanted in self.WANTED.items():
            texts = [t for t in self.texts if t[0] == kind]
            levels = max((len(t[3]) for t in texts), default=1)
            for level in range(levels):
                fit = min((self._fit(forms[min(level, len(forms) - 1)], w, h, kw.get("weight", "normal"))
                           for _, _, _, forms, w, h, kw in texts), default=wanted)
                if fit >= self.least or level == levels - 1:
                    chosen[kind] = (max(self.least, min(wanted, fit)), level)
                    break
        return chosen

    def write(self, chosen: dict[str, tuple[float, int]]) -> None:
        for kind, x, y, forms, w, h, kw in self.texts:
            size, level = chosen[kind]
            lines = forms[min(level, len(forms) - 1)]
            if self._fits(lines, size, w, h, kw.get("weight", "normal")):
                # Inside the axes: constrained layout need not measure it (text costs the most).
                self.ax.text(x, y, "\n".join(lines), ha="center", va="center", fontsize=size, linespacing=1.05, in_layout=False, **kw)


def write_alike(pens: list[_Pen]) -> None:
    """Write the text of several pictures, each kind at the size that fits in all of them."""
    chosen = [pen.sizes() for pen in pens]
    for pen in pens:  # the shortest forms any picture needs, at the smallest size
        pen.write({kind: (min(c[kind][0] for c in chosen), max(c[kind][1] for c in chosen)) for kind in chosen[0]})


def _draw(ax, g: nx.DiGraph, rows) -> tuple[set[str], _Pen]:
    width = max(b.x + b.width / 2 for row in rows for b in row) + 1
    ys, bottoms, top = [], [], HEAD  # per row: the line between headers and cells; the bottom
    for row in rows:
        ys.append(top - HEAD)
        bottoms.append(top - PROC if row[0].key[0] == "proc" else top - HEAD - CELL)
        top = bottoms[-1] - ARROWS
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(bottoms[-1] - 0.4, HEAD + 0.4)
    height = HEAD + 0.4 - bottoms[-1] + 0.4
    pen = _Pen(ax, width, height)
    boxes = {b.key: b for row in rows for b in row}
    lines, colours, used = [], [], set()
    for row in rows:
        y, bottom = ys[row[0].row], bottoms[row[0].row]
        for b in row:
            x0 = b.x - b.width / 2
            if b.key[0] == "proc":
                ax.add_patch(Rectangle((x0, bottom), b.width, PROC, facecolor=style.LIGHT, edgecolor=style.INK, linewidth=1.0))
                pen.text("proc", b.x, bottom + PROC / 2, [[f"pid {b.key[1]}"], ["pid", str(b.key[1])], [str(b.key[1])]], b.width, PROC, weight="bold")
            elif b.key[0] in ("table", "tables"):
                _draw_table(ax, pen, g, b, x0, y, used)
            else:
                _draw_frame(ax, pen, g, b, x0, y, used)
            if b.highlight:
                ax.add_patch(Rectangle((x0 - 0.15, bottom - 0.15), b.width + 0.3, y + HEAD - bottom + 0.3, fill=False,
                                       edgecolor=style.HIGHLIGHT, linewidth=2.6, zorder=5))
            for c in b.cells:
                if c.child is not None:
                    child = boxes[c.child]
                    lines.append([(b.x + c.offset, bottom), (child.x, ys[child.row] + HEAD)])
                    colours.append(style.HIGHLIGHT if c.highlight else (style.WRPROTECT if c.cow else style.INK))
    ax.add_collection(LineCollection(lines, colors=colours, linewidths=0.8, zorder=1))
    ends = np.array([seg[1] for seg in lines]) if lines else np.zeros((0, 2))
    ax.scatter(ends[:, 0], ends[:, 1] + 0.08, marker="v", s=10, c=colours, zorder=2, linewidths=0)
    return used, pen


def _cell_style(c: Cell):
    """(face colour, edge colour, hatch, text, legend key) of an entry cell."""
    if c.state == "table":
        return (style.TABLE_PTR, style.INK, None, "", "table") if c.rw else (RO_TINT, style.WRPROTECT, "////", "RO", "cow")
    if c.state == "swap":
        return "white", style.GREY, "..", "sw", "swap"
    if c.state == "none":
        return "white", style.GREY, "xx", "--", "none"
    if c.state == "page":
        if c.rw:
            return style.WRITABLE, style.INK, None, "RW", "rw"
        return (RO_TINT, style.WRPROTECT, "////", "RO", "cow") if c.cow else ("#CCCCCC", style.INK, None, "RO", "ro")
    return "white", style.INK, None, "", None


def _header(g, b: Box) -> list[str]:
    """A table's header: its level and frame, its use count, and its sharers if shared."""
    node = g.nodes[("table", b.pfns[0])]
    if len(b.pfns) == 1:
        head = [f"{node['level_name']} · frame {b.pfns[0]}"]
    else:
        head = [f"{len(b.pfns)} {node['level_name']} tables · frames {min(b.pfns)}–{max(b.pfns)}"]
    head.append(f"use count {node['use_count']}")
    if node["use_count"] > 1:
        head.append("pid " + ", ".join(str(p) for p in node["sharers"]))
    return head


def _draw_table(ax, pen: _Pen, g, b: Box, x0: float, y: float, used: set) -> None:
    node = g.nodes[("table", b.pfns[0])]
    shared = node["use_count"] > 1
    head = _header(g, b)
    ax.add_patch(Rectangle((x0, y), b.width, HEAD, facecolor=style.SHARED if shared else style.LIGHT, edgecolor=style.INK, linewidth=0.6))
    short = f"{node['level_name']} {b.pfns[0]}" if len(b.pfns) == 1 else f"{len(b.pfns)} {node['level_name']}s"
    forms = [head, head[:2], [short, head[1]], [short, f"count {node['use_count']}"], [short]]
    pen.text("head", b.x, y + HEAD / 2, forms, b.width, HEAD, weight="bold" if shared else "normal")
    left = x0
    for c in b.cells:
        face, edge, hatch, text, key = _cell_style(c)
        used.add(key)
        if c.state == "gap":
            pen.text("gap", left + c.width / 2, y - CELL / 2, [["⋯"]], c.width, CELL, color=style.GREY)
        else:
            ax.add_patch(Rectangle((left, y - CELL), c.width, CELL, facecolor=face, edgecolor=edge, linewidth=0.5, hatch=hatch))
            span = str(c.lo) if c.lo == c.hi else f"{c.lo}–{c.hi}"
            if b.key[0] == "tables":
                span = f"{c.hi + 1} entries"
            pen.text("cell", left + c.width / 2, y - CELL / 2, [[span, text], [span]] if text else [[span]], c.width, CELL)
        if c.highlight:
            ax.add_patch(Rectangle((left, y - CELL), c.width, CELL, fill=False, edgecolor=style.HIGHLIGHT, linewidth=2.0, zorder=6))
        left += c.width
    used.discard(None)
    if shared:
        used.add("shared_table")
        ax.add_patch(Rectangle((x0, y - CELL), b.width, CELL + HEAD, fill=False, edgecolor=style.SHARED, linewidth=2.4, zorder=4))


def _draw_frame(ax, pen: _Pen, g, b: Box, x0: float, y: float, used: set) -> None:
    kind_of = "swap" if b.key[0] in ("swap", "slots") else "frame"
    data = [g.nodes[(kind_of, p)] for p in b.pfns]
    kind = data[0]["kind"]
    counts = sorted({d.get("mapcount", 0) for d in data})
    several = counts[-1] > 1
    if kind == "swap":
        text = [f"swap slot {b.pfns[0]}"] if len(b.pfns) == 1 else [f"{len(b.pfns)} pages", "in swap"]
    elif kind == "zero":
        text = ["zero page", f"frame {b.pfns[0]}"]
    else:
        mapcount = counts[0] if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        first = f"frame {b.pfns[0]}" if len(b.pfns) == 1 else f"{len(b.pfns)} {kind} pages"
        text = [first, kind if len(b.pfns) == 1 else f"frames {min(b.pfns)}–{max(b.pfns)}", f"mapcount {mapcount}"]
    face = {"anon": style.ANON, "zero": style.ZERO, "shmem": style.SHMEM, "swap": "white"}[kind]
    used.add("slot" if kind == "swap" else kind)
    if several:
        used.add("mapcount")
    ax.add_patch(Rectangle((x0, y - CELL), b.width, CELL + HEAD, facecolor=face, edgecolor=style.SHARED if several else style.INK,
                           linewidth=2.4 if several else 0.6, linestyle="--" if kind == "swap" else "-"))
    forms = [text, [text[0], text[-1]], text[:1], ["zero"] if kind == "zero" else [str(b.pfns[0])] if len(b.pfns) == 1 else text[:1]]
    pen.text("frame", b.x, y + (HEAD - CELL) / 2, forms, b.width, CELL + HEAD, color="white" if kind in ("anon", "shmem") else style.INK)
