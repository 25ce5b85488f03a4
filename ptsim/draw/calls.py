"""One kernel call, seen through its events: a before/after picture and a readable log."""

from __future__ import annotations

import networkx as nx
from matplotlib.figure import Figure

from . import style
from .graph import kernel_of, table_graph
from .tables import draw_graph, events_of, figure_height, legend, write_alike

_COLUMNS = ("func", "action", "pid", "addr", "level", "table", "frame", "count")


def before_after(machine, call, processes=None, *, collapse=None, title=None):
    """Draw the page tables, run `call()` under `machine.trace()`, draw them again; outline in
    both what the events name. Returns (figure with two axes side by side, the events).

    The after picture shows the `processes` still alive and any process the call created
    (a fork's child). If `call` raises, the exception propagates and nothing is drawn.
    """
    k = kernel_of(machine)
    if not callable(call):
        raise ValueError(f"call must be callable with no arguments, not {type(call).__name__}")
    if collapse is not None and not isinstance(collapse, bool):
        raise ValueError(f"collapse must be None, True or False, not {collapse!r}")
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a str or None, not {type(title).__name__}")
    before = table_graph(machine, processes)
    alive_before = {pid for pid, t in k.tasks.items() if not t.exited}
    with machine.trace() as events:
        call()
    events = list(events)
    if processes is None:
        after = table_graph(machine)
    else:
        born = {e.pid for e in events if e.pid is not None and e.pid not in alive_before}
        keep = sorted(pid for pid in set(before.graph["pids"]) | born if not k.tasks[pid].exited)
        after = table_graph(machine, keep) if keep else nx.DiGraph(arch=k.arch.name, policy=machine.policy, pids=())
    fig = Figure(figsize=(style.WIDTH, figure_height(k.arch) + 0.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    pens = []
    used = draw_graph(left, before, k.arch, collapse=collapse, events=events, title="before", pens=pens)
    used |= draw_graph(right, after, k.arch, collapse=collapse, events=events, title=f"after ({len(events)} events)", pens=pens)
    write_alike(pens)
    legend(fig, used, loc="outside lower center")
    if title is not None:
        fig.suptitle(title, fontsize=11)
    return fig, events


def event_table(events) -> str:
    """The events as a fixed-width table, one line each, for a log: func, action, pid,
    addr (hex), level, table, frame, count, and any detail."""
    if events is None:
        raise ValueError("events must be a list of ptsim Events, not None")
    events = events_of(events, "events")
    rows = [_COLUMNS + ("detail",)]
    for e in events:
        cells = [e.func, e.action]
        for name in _COLUMNS[2:]:
            value = getattr(e, name)
            cells.append("-" if value is None else (f"{value:#x}" if name == "addr" else str(value)))
        cells.append(" ".join(f"{k}={v}" for k, v in sorted(e.detail.items())))
        rows.append(tuple(cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5, 6, 7}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    return "\n".join(lines)
