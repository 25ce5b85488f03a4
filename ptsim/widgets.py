"""The book's widgets: a scenario lab, a stepper through one kernel call, and cost sliders.

Each widget is an ipywidgets box: make one as a cell's last expression and it shows. Each can
also be driven from code, as the tests and the chapters do (`lab.do("fork", pid=1)`,
`stepper.step = 3`, `explorer.size.value = 8`). They only read the machine, its events and its
counters; every page-table picture and every event log comes from `ptsim.draw`.

Hooks for a real browser (they hold exactly): a button is described by what it does ("fork",
"write", "read", "munmap", "mprotect", "exit", "reset"; the stepper's "prev" and "next"); every
picture is an `ipywidgets.Image` of PNG bytes in CSS class `ptsim-picture`; every event log an
HTML widget in class `ptsim-log`; counters in class `ptsim-counters`. The widgets' own boxes
carry `ptsim-lab`, `ptsim-stepper` and `ptsim-cost`.
"""

from __future__ import annotations

import copy
import html
import io
import random
from dataclasses import dataclass, field

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .draw import event_table, page_tables, style, table_graph
from .errors import InvariantError, OutOfMemory, ProcessExited, SegmentationFault
from .hardware import ARCHES
from .kernel import COUNTERS, POLICIES, Task
from .kernel.page import PG_FREE, PG_PGTABLE
from .machine import Machine, Process

LAB_CALLS = ("fork", "write", "read", "munmap", "mprotect", "exit")
READ_BYTES = 8  # what the lab's read button reads: enough to see whose write a page holds
HISTORY_LINES = 8  # calls kept in view above the last call's events
# Simulated RAM of a lab when none is given: room for a dozen processes of the default
# scenario under `copy`, yet small enough that nothing the lab does takes long.
LAB_RAM = {"toy": 512 * 64, "i386": 16 << 20, "x86_64": 16 << 20}


def png(fig: Figure) -> bytes:
    """A figure as PNG bytes, for an `ipywidgets.Image`, at the notebook's dpi: a picture
    drawn as wide as its box (`picture_width`) shows at its size, its text readable as the
    notebook's figures are (`style.smallest_points`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=style.DPI)
    return buf.getvalue()


def picture_width(columns: int = 1) -> float:
    """Inches: a picture that fills one of `columns` side by side in the output area (less a
    few pixels of margin each), shown at 100 % of its column's width."""
    return (style.OUTPUT_PX / columns - 12) / style.DPI


def _picture() -> widgets.Image:
    image = widgets.Image(format="png", layout=widgets.Layout(width="100%", height="auto"))
    image.add_class("ptsim-picture")
    return image


def _pre(text: str) -> str:
    """Fixed-width text that keeps its columns (scrolls rather than wraps)."""
    return f"<pre style='font-size: 11px; line-height: 1.25; margin: 0; white-space: pre; overflow-x: auto'>{html.escape(text)}</pre>"


def _log(css_class: str) -> widgets.HTML:
    view = widgets.HTML(layout=widgets.Layout(width="100%", overflow="auto"))
    view.add_class(css_class)
    return view


# -- the lab ------------------------------------------------------------------------------------


def default_setup(machine: Machine) -> list[Process]:
    """The lab's starting scenario: one process with a private mapping two last-level tables
    long, every page written (page i full of the letter 'a' + i), so that a fork has tables
    to copy or share, and a one-page munmap leaves one table whole and the other in part."""
    arch = machine.arch
    span, page = arch.pte_span, arch.page_size
    p = machine.spawn()
    addr = p.mmap(addr=(arch.task_size - 2 * span) & ~(span - 1), length=2 * span, prot="rw")
    p.write(addr, b"".join(bytes([ord("a") + i % 26]) * page for i in range(2 * span // page)))
    return [p]


@dataclass
class Outcome:
    """What one policy's machine did for one lab call."""

    policy: str
    line: str  # what the process saw: "pid 1: fork() = 2", "...: SIGSEGV at 0x40 (reason)"
    events: list
    counters: dict[str, int]  # machine.counters after the call, with "free_frames"
    changes: dict[str, int]  # what the call changed in them (nonzero only)
    value: object = None  # the child's pid after a fork, the bytes a read returned
    error: Exception | None = None  # what the call raised, shown in `line`
    check: str | None = None  # machine.check()'s complaint after the call, None if it passed


@dataclass
class _Column:
    """One policy's machine, its processes (by pid, exited ones kept) and what it did."""

    machine: Machine
    processes: dict[int, Process]
    history: list[str] = field(default_factory=list)
    last: Outcome | None = None


class Lab(widgets.VBox):
    """Play the same calls on one machine per fork policy, side by side.

    Each call is played under `machine.trace()` on every machine; then each column shows its
    page tables with the call's events outlined, the log of the call (what the process saw,
    then the kernel's events) and the counters with what the call changed. After every call
    `machine.check()` runs; a complaint is shown in the log, and kept in `Outcome.check`.

    `setup(machine)` builds the starting scenario and returns its processes; it must do the
    same on every machine (it is called once per policy). Default: `default_setup`.
    `side_by_side=False` stacks the policies, each picture at the full width.
    """

    def __init__(self, arch: str = "toy", policies=("copy", "shared"), ram: int | None = None, setup=None, side_by_side: bool = True):
        if arch not in ARCHES:
            raise ValueError(f"arch must be one of {sorted(ARCHES)}, not {arch!r}")
        if isinstance(policies, str) or not isinstance(policies, (tuple, list)) or not policies:
            raise ValueError(f"policies must be a non-empty tuple of policy names, not {policies!r}")
        for policy in policies:
            if policy not in POLICIES:
                raise ValueError(f"policies: {policy!r} is not one of {sorted(POLICIES)}")
        if len(set(policies)) != len(policies):
            raise ValueError(f"policies: {policies!r} names a policy twice")
        if setup is not None and not callable(setup):
            raise ValueError(f"setup must be a callable(machine) -> list of processes, not {type(setup).__name__}")
        if not isinstance(side_by_side, bool):
            raise ValueError(f"side_by_side must be True or False, not {side_by_side!r}")
        self.arch, self.policies = arch, tuple(policies)
        self.ram = LAB_RAM[arch] if ram is None else ram
        self.setup = default_setup if setup is None else setup
        self.side_by_side = side_by_side
        self.calls = 0
        self._columns = {policy: _Column(m, procs) for policy, (m, procs) in self._start().items()}
        # The views, by policy: what the browser test looks for (see the module docstring).
        self.pictures = {policy: _picture() for policy in self.policies}
        self.logs = {policy: _log("ptsim-log") for policy in self.policies}
        self.counter_views = {policy: _log("ptsim-counters") for policy in self.policies}

        self.pid = widgets.Dropdown(description="pid", layout=widgets.Layout(width="130px"), style={"description_width": "30px"})
        self.addr = widgets.Combobox(description="addr", ensure_option=False, placeholder="hex address", layout=widgets.Layout(width="190px"), style={"description_width": "35px"})
        self.pages = widgets.BoundedIntText(value=1, min=1, max=1 << 20, description="pages", layout=widgets.Layout(width="130px"), style={"description_width": "40px"})
        self.prot = widgets.Dropdown(options=[("none", ""), ("r", "r"), ("rw", "rw")], value="r", description="prot", layout=widgets.Layout(width="120px"), style={"description_width": "35px"})
        self.data = widgets.Text(value="x", description="data", layout=widgets.Layout(width="150px"), style={"description_width": "35px"})
        self.status = widgets.HTML()
        self.buttons = {name: widgets.Button(description=name, layout=widgets.Layout(width="auto")) for name in LAB_CALLS + ("reset",)}
        for button in self.buttons.values():
            button.on_click(self._press)
        self.pid.observe(lambda change: self._refresh_addresses(new_pid=True), names="value")
        columns = []
        for policy in self.policies:
            title = widgets.HTML(f"<b>policy {html.escape(policy)}</b>")
            if side_by_side:
                column = widgets.VBox([title, self.pictures[policy], self.counter_views[policy], self.logs[policy]], layout=widgets.Layout(width=f"{100 / len(self.policies):.1f}%"))
            else:
                text = widgets.HBox([self.counter_views[policy], self.logs[policy]])
                self.counter_views[policy].layout.width, self.logs[policy].layout.width = "35%", "65%"
                column = widgets.VBox([title, self.pictures[policy], text])
            columns.append(column)
        super().__init__(
            [
                widgets.HBox([self.pid, self.addr, self.pages, self.prot, self.data]),
                widgets.HBox(list(self.buttons.values())),
                self.status,
                (widgets.HBox if side_by_side else widgets.VBox)(columns),
            ]
        )
        self.add_class("ptsim-lab")
        self._refresh()

    # -- state ----------------------------------------------------------------------------------

    def _start(self) -> dict[str, tuple[Machine, dict[int, Process]]]:
        """A new machine per policy, set up; the same pids on each, or ValueError."""
        started = {}
        for policy in self.policies:
            machine = Machine(arch=self.arch, policy=policy, ram=self.ram)
            made = self.setup(machine)
            if not isinstance(made, (list, tuple)) or not made or not all(isinstance(p, Process) and p.machine is machine for p in made):
                raise ValueError(f"setup must return a non-empty list of the machine's Processes, not {made!r}")
            started[policy] = machine, {p.pid: p for p in made}
        pids = {policy: sorted(procs) for policy, (_, procs) in started.items()}
        if len({tuple(p) for p in pids.values()}) > 1:
            raise ValueError(f"setup must make the same processes on every machine; it made pids {pids}")
        return started

    def __repr__(self) -> str:  # the text a notebook stores beside the widget: short and stable
        return f"Lab(arch={self.arch!r}, policies={self.policies!r})"

    @property
    def machines(self) -> dict[str, Machine]:
        return {policy: col.machine for policy, col in self._columns.items()}

    def processes(self, policy: str) -> dict[int, Process]:
        """The processes of one policy's machine by pid, exited ones included."""
        return dict(self._column_of(policy).processes)

    def live_pids(self) -> list[int]:
        """Pids alive on any of the machines (they agree unless memory ran out on one)."""
        return sorted({pid for col in self._columns.values() for pid, p in col.processes.items() if not p.exited})

    def log_text(self, policy: str) -> str:
        """The log as its view shows it: the last calls, then the last call's events."""
        col = self._column_of(policy)
        lines = col.history[-HISTORY_LINES:]
        if col.last is not None:
            events = col.last.events
            lines = lines + ["", f"events of call {self.calls}:" + ("" if events else " none"), *([event_table(events)] if events else [])]
        return "\n".join(lines)

    def last(self, policy: str) -> Outcome | None:
        return self._column_of(policy).last

    def _column_of(self, policy) -> _Column:
        if policy not in self._columns:
            raise ValueError(f"policy must be one of {list(self._columns)}, not {policy!r}")
        return self._columns[policy]

    def reset(self) -> None:
        """Back to the starting scenario: new machines, set up again."""
        for policy, (machine, procs) in self._start().items():
            col = self._columns[policy]
            col.machine, col.processes, col.history, col.last = machine, procs, [], None
        self.calls = 0
        self._refresh()

    # -- calls ----------------------------------------------------------------------------------

    def do(self, call: str, pid: int | None = None, addr: int | None = None, *, data: bytes = b"x", length: int | None = None, prot: str = "r") -> dict[str, Outcome]:
        """Play one call by process `pid` (default: the one selected) on every machine.

        call: "fork", "write" (store `data` at `addr`), "read" (load `length` bytes, default
        READ_BYTES), "munmap" or "mprotect" (`length` bytes, default one page; `prot` "",
        "r" or "rw"), "exit". What the kernel refuses (a SIGSEGV, an EINVAL, an exited
        process, memory running out) is shown in the log and returned in each Outcome;
        only a bad argument to `do` itself raises ValueError, before anything runs.
        """
        if call not in LAB_CALLS:
            raise ValueError(f"call must be one of {LAB_CALLS}, not {call!r}")
        if pid is None:
            pid = self.pid.value
        known = {p for col in self._columns.values() for p in col.processes}
        if not isinstance(pid, int) or isinstance(pid, bool) or pid not in known:
            raise ValueError(f"pid: no process {pid!r} in this lab (pids: {sorted(known)})")
        if call in ("fork", "exit"):
            if addr is not None:
                raise ValueError(f"addr: {call} takes no address")
        elif not isinstance(addr, int) or isinstance(addr, bool):
            raise ValueError(f"addr must be an int for {call}, not {addr!r}")
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"data must be bytes, not {type(data).__name__}")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool)):
            raise ValueError(f"length must be an int, not {length!r}")
        if not isinstance(prot, str):
            raise ValueError(f"prot must be a str, not {type(prot).__name__}")
        if length is None:
            length = READ_BYTES if call == "read" else ARCHES[self.arch].page_size
        self.calls += 1
        outcomes = {policy: self._play(col, policy, call, pid, addr, bytes(data), length, prot) for policy, col in self._columns.items()}
        self._refresh()
        return outcomes

    def _play(self, col: _Column, policy: str, call: str, pid: int, addr, data: bytes, length: int, prot: str) -> Outcome:
        m, proc = col.machine, col.processes.get(pid)
        args = "" if addr is None else {"write": f"{addr:#x}, {data!r}", "read": f"{addr:#x}, {length}", "munmap": f"{addr:#x}, {length:#x}", "mprotect": f"{addr:#x}, {length:#x}, {prot!r}"}[call]
        text = f"pid {pid}: {call}({args})"
        before = dict(m.counters, free_frames=m.free_frames)
        value = error = None
        with m.trace() as events:
            try:
                if proc is None:  # only if memory ran out on this machine alone at a fork
                    raise ProcessExited(f"no process {pid} on this machine")
                if call == "fork":
                    child = proc.fork()
                    col.processes[child.pid] = child
                    value = child.pid
                elif call == "write":
                    proc.write(addr, data)
                elif call == "read":
                    value = proc.read(addr, length)
                elif call == "munmap":
                    proc.munmap(addr, length)
                elif call == "mprotect":
                    proc.mprotect(addr, length, prot)
                else:
                    proc.exit()
            except SegmentationFault as e:
                error, text = e, f"{text}: SIGSEGV at {e.address:#x} ({e.reason})"
            except (ValueError, ProcessExited) as e:
                error, text = e, f"{text} = -1 ({e})"
            except OutOfMemory as e:
                error, text = e, f"{text} = -1 (out of memory: {e}; nothing changed)"
            else:
                text += {"fork": f" = {value}", "read": f" = {value!r}", "munmap": " = 0", "mprotect": " = 0"}.get(call, "")
        complaint = None
        try:
            m.check()
        except InvariantError as e:
            complaint = str(e)
            text += f"\n    machine.check() FAILED: {complaint}"
        after = dict(m.counters, free_frames=m.free_frames)
        changes = {k: after.get(k, 0) - before.get(k, 0) for k in after.keys() | before.keys() if after.get(k, 0) != before.get(k, 0)}
        col.history.append(f"{self.calls:>3}. {text}")
        col.last = Outcome(policy, text, list(events), after, changes, value, error, complaint)
        return col.last

    # -- the views ------------------------------------------------------------------------------

    def _press(self, button: widgets.Button) -> None:
        call = button.description
        self.status.value = ""
        if call == "reset":
            self.reset()
            return
        addr = None
        if call not in ("fork", "exit"):
            try:
                addr = int(self.addr.value.strip(), 16)
            except ValueError:
                self.status.value = f"<span style='color: {style.VERMILLION}'>addr: {html.escape(repr(self.addr.value))} is not a hex address</span>"
                return
        page = ARCHES[self.arch].page_size
        length = self.pages.value * page if call in ("munmap", "mprotect") else None
        self.do(call, self.pid.value, addr, data=self.data.value.encode(), length=length, prot=self.prot.value)

    def _refresh(self) -> None:
        live = self.live_pids()
        current = self.pid.value
        self.pid.options = live
        if live:
            self.pid.value = current if current in live else live[0]
        for name, button in self.buttons.items():
            button.disabled = name != "reset" and not live
        self._refresh_addresses()  # also when the pid stayed: its mappings may have changed
        for policy, col in self._columns.items():
            m, last = col.machine, col.last
            alive = [p for p in col.processes.values() if not p.exited]
            self.pictures[policy].value = png(self.figure(policy))
            self.logs[policy].value = _pre(self.log_text(policy))
            counters = dict(m.counters, free_frames=m.free_frames)
            changes = {} if last is None else last.changes
            names = [n for n in COUNTERS + ("free_frames",) if counters.get(n) or changes.get(n)]
            width = max(map(len, names), default=0)
            self.counter_views[policy].value = _pre("\n".join(f"{n:<{width}} {counters.get(n, 0):>7}" + (f"  ({changes[n]:+d})" if changes.get(n) else "") for n in names))

    def figure(self, policy: str) -> Figure:
        """The picture of one policy's machine, as its view shows it: the page tables of the
        live processes, the last call's events outlined. Side by side, each is drawn as wide
        as its column and summarised (runs of alike entries one cell, their pages one box),
        so that its text stays readable there."""
        col = self._column_of(policy)
        last = col.last
        alive = [p for p in col.processes.values() if not p.exited]
        title = f"{policy}: " + ("the starting scenario" if last is None else f"after call {self.calls}, {last.line.splitlines()[0]}")
        columns = len(self.policies) if self.side_by_side else 1
        if not alive:
            return _empty_figure(title + "\n(no live process)", picture_width(columns))
        return page_tables(col.machine, alive, highlight=None if last is None else last.events, title=title,
                           collapse=True if columns > 1 else None, width=picture_width(columns))

    def _refresh_addresses(self, new_pid: bool = False) -> None:
        """The address box offers every page the selected process maps. Any hex can be typed,
        and stays after a call; another pid starts from its first page."""
        pid, page = self.pid.value, ARCHES[self.arch].page_size
        proc = next((col.processes[pid] for col in self._columns.values() if pid in col.processes and not col.processes[pid].exited), None)
        pages = [] if proc is None else [f"{a:#x}" for v in proc.mm.vmas for a in range(v.start, v.end, page)]
        self.addr.options = pages
        if pages and (not self.addr.value or (new_pid and self.addr.value not in pages)):
            self.addr.value = pages[0]


def _empty_figure(title: str, width: float = style.WIDTH) -> Figure:
    fig = Figure(figsize=(width, 1.5))
    fig.text(0.5, 0.5, title, ha="center", va="center", fontsize=10, wrap=True)
    return fig


# -- the stepper --------------------------------------------------------------------------------


class _Recorder(list):
    """An event list that calls `on_event` after each event is appended: the tracer appends
    each event the moment the kernel reports it, so `on_event` sees the machine right then."""

    def __init__(self, on_event):
        super().__init__()
        self.on_event = on_event

    def append(self, event) -> None:
        super().append(event)
        self.on_event()


def snapshot(machine: Machine) -> Machine:
    """A copy of `machine` as it is at this instant, even in the middle of a kernel call.

    Only frames in use are copied (free frames are zero, an invariant the checker holds), so
    a copy costs what the machine uses, not its RAM. The trace being recorded is not copied.
    In the copy, an mm that no task holds yet or any more is given back to its owner, so the
    pictures can show it: a fork's child before its task exists, an exiting process while
    exit_mmap tears its mm down.
    """
    k = machine.kernel
    phys, page = k.phys, k.arch.page_size
    data = np.zeros(phys.bytes.shape, dtype=phys.bytes.dtype)  # calloc'ed: only copied frames cost memory
    used = np.flatnonzero(k.mem_map.kind != PG_FREE)
    data.reshape(phys.nframes, page)[used] = phys.bytes.reshape(phys.nframes, page)[used]
    memo = {id(phys.bytes): data, id(phys.tables): data.view(phys.tables.dtype).reshape(phys.tables.shape)}
    memo[id(k.tracer.listeners)] = []  # the copy records for nobody
    copied = copy.deepcopy(machine, memo)
    tasks = copied.kernel.tasks
    for mm in copied.kernel.mms.values():
        task = tasks.get(mm.owner)
        if task is None:
            tasks[mm.owner] = Task(mm.owner, mm)
        elif task.mm is None:
            task.mm = mm
    return copied


class Stepper(widgets.VBox):
    """Step through one kernel call, event by event, with the page tables at each step.

    `call` (no arguments, e.g. `lambda: child.write(a, b"x")`) runs ONCE, on `machine` itself,
    under `machine.trace()`; as each event is reported, a `snapshot` of the machine is taken.
    Step k (1 to the number of events) shows that snapshot with event k outlined: the machine
    at the instant the kernel reported event k. Most steps are reported once done (a table
    shared, copied or unshared, entries zapped or changed, a page mapped); a batch of tables
    reported one by one after the batch (copy_table, share_table) shows whole from its first
    event on. Two are reported before their last write, which the next step shows:
    `alloc_table` (the upper entry is not yet pointed at the new table) and `free_table` (the
    table is still linked; it is freed after the TLB flush, as is any page a zap drops, after
    the last event). After the stepper
    is made the machine is as the call left it.

    processes: None (every live process at each step, a fork's child included from the
    moment its mm exists) or the Processes / pids to draw (plus any the call creates).
    `result` is what `call` returned (a fork's child). If `call` raises, the exception
    propagates (ptsim's calls change nothing when they fail); a call that reports no event
    (a read of a present page) raises ValueError.
    Buttons "prev" and "next", a slider "step".
    """

    def __init__(self, machine: Machine, call, processes=None):
        if not isinstance(machine, Machine):
            raise ValueError(f"machine must be a ptsim.Machine, not {type(machine).__name__}")
        if not callable(call):
            raise ValueError(f"call must be callable with no arguments, not {type(call).__name__}")
        if processes is not None:
            pids = sorted(table_graph(machine, processes).graph["pids"])  # ValueError naming processes
        alive = {pid for pid, task in machine.kernel.tasks.items() if not task.exited}
        self.machine = machine
        self._snapshots: list[Machine] = []
        # A trace of its own, beside any open one: a list that snapshots the machine at each event.
        with machine.kernel.tracer.listening(_Recorder(lambda: self._snapshots.append(snapshot(machine)))) as recorder:
            self.result = call()
        self.events = list(recorder)
        if not self.events:
            raise ValueError("call reported no kernel event: there is nothing to step through")
        # What to draw: every live process, or those asked for and any the call created.
        self._pids = None if processes is None else sorted(set(pids) | {e.pid for e in self.events if e.pid is not None} - alive)
        self._pictures: dict[int, bytes] = {}
        n = len(self.events)
        self.prev = widgets.Button(description="prev", layout=widgets.Layout(width="auto"))
        self.next = widgets.Button(description="next", layout=widgets.Layout(width="auto"))
        self.slider = widgets.IntSlider(value=1, min=1, max=n, description="step", continuous_update=False)
        self.prev.on_click(lambda _: self._move(-1))
        self.next.on_click(lambda _: self._move(+1))
        self.slider.observe(lambda change: self._show(), names="value")
        self.picture = _picture()
        self.log_view = _log("ptsim-log")
        super().__init__([widgets.HBox([self.prev, self.slider, self.next]), self.picture, self.log_view])
        self.add_class("ptsim-stepper")
        self._show()

    def __len__(self) -> int:
        return len(self.events)

    def __repr__(self) -> str:
        return f"Stepper(policy {self.machine.policy!r}, {len(self)} events)"

    @property
    def step(self) -> int:
        """The step shown, 1 to len(self): event `self.events[step - 1]`."""
        return self.slider.value

    @step.setter
    def step(self, k: int) -> None:
        self._check_step(k)
        self.slider.value = k

    def machine_at(self, k: int) -> Machine:
        """The machine as it was when event k (1-based) was reported. Read it; do not run it."""
        self._check_step(k)
        return self._snapshots[k - 1]

    def figure_at(self, k: int) -> Figure:
        """The picture of step k: the tables at `machine_at(k)`, event k outlined."""
        self._check_step(k)
        m, e = self._snapshots[k - 1], self.events[k - 1]
        title = f"step {k} of {len(self)}: {e.func} {e.action}"
        drawn = None if self._pids is None else [pid for pid in self._pids if pid in m.kernel.tasks and not m.kernel.tasks[pid].exited]
        if drawn == []:
            return _empty_figure(title + "\n(none of the processes is alive)", picture_width())
        return page_tables(m, drawn, highlight=[e], title=title, width=picture_width())

    def picture_at(self, k: int) -> bytes:
        """The PNG of step k (`figure_at`)."""
        self._check_step(k)
        if k not in self._pictures:
            self._pictures[k] = png(self.figure_at(k))
        return self._pictures[k]

    def log_text(self, k: int | None = None) -> str:
        """The call's events, the one of step k (default: the step shown) marked with '>'."""
        k = self.step if k is None else k
        self._check_step(k)
        header, *rows = event_table(self.events).splitlines()
        return "\n".join(["  " + header] + [("> " if i == k else "  ") + row for i, row in enumerate(rows, start=1)])

    def _check_step(self, k) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(self):
            raise ValueError(f"step must be an int from 1 to {len(self)}, not {k!r}")

    def _move(self, delta: int) -> None:
        self.slider.value = min(max(self.slider.value + delta, 1), len(self))

    def _show(self) -> None:
        k = self.step
        self.prev.disabled, self.next.disabled = k == 1, k == len(self)
        self.picture.value = self.picture_at(k)
        self.log_view.value = _pre(self.log_text(k))


# -- the cost sliders ---------------------------------------------------------------------------

COST_METRICS = {  # what fork_cost measures, and how the plots label it
    "tables_allocated": "page-table pages\nallocated",
    "ptes_copied": "PTEs copied",
    "pages_copied": "data pages copied\n(copy-on-write)",
    "table_kib": "page-table memory\nafter the writes (KiB)",
}
WRITE_PATTERNS = ("random", "first")  # which pages the parent writes: a seeded sample, or the first ones
POLICY_COLOURS = {"copy": style.VERMILLION, "shared": style.ORANGE, "upper_wp": style.BLUE}


def fork_cost(arch: str, policy: str, size: int, fraction: float, pattern: str = "random", seed: int = 0) -> dict[str, int]:
    """Measure, on a fresh machine, what a snapshotting parent costs: it writes every page of
    a private mapping of `size` bytes, forks, and writes `fraction` of its pages again while
    the child lives (each write to a shared page is a copy-on-write fault).

    pattern "random": the pages are a `seed`ed sample; "first": the first ones. Returns the
    counters' changes from just before the fork to after the writes (COST_METRICS), and
    `table_kib`: the frames holding page tables after the writes, every level of both
    processes, in KiB. The mapping starts on a last-level table boundary.
    """
    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {sorted(ARCHES)}, not {arch!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
    a = ARCHES[arch]
    start = _first_table_boundary(a)
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % a.page_size or start + size > a.task_size:
        raise ValueError(f"size must be a positive multiple of the {a.page_size}-byte page below {a.task_size - start:#x}, not {size!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be a number from 0 to 1, not {fraction!r}")
    if pattern not in WRITE_PATTERNS:
        raise ValueError(f"pattern must be one of {WRITE_PATTERNS}, not {pattern!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, not {seed!r}")
    npages = size // a.page_size
    m = Machine(arch=arch, policy=policy, ram=2 * size + 256 * a.page_size)  # both copies, and tables
    parent = m.spawn()
    addr = parent.mmap(addr=start, length=size, prot="rw")
    parent.write(addr, b"\x01" * size)
    before = m.counters
    parent.fork()  # the child lives on, holding every page, while the parent writes
    n = round(fraction * npages)
    if pattern == "first":
        parent.write(addr, b"\x02" * (n * a.page_size))
    else:
        for i in sorted(random.Random(seed).sample(range(npages), n)):
            parent.write(addr + i * a.page_size, b"\x02")
    after = m.counters
    cost = {name: after.get(name, 0) - before.get(name, 0) for name in COST_METRICS if name != "table_kib"}
    cost["table_kib"] = int(np.count_nonzero(m.kernel.mem_map.kind == PG_PGTABLE)) * a.page_size // 1024
    return cost


def _first_table_boundary(arch) -> int:
    """The lowest user address where a last-level table's span begins."""
    return -(-arch.mmap_min_addr // arch.pte_span) * arch.pte_span


class CostExplorer(widgets.VBox):
    """Sliders for the mapped size (MiB) and the fraction of pages the parent writes after
    fork; bar charts of `fork_cost` for each policy, measured by running ptsim machines (each
    point once: results are cached per size, fraction and pattern).

    `values(size_mib, fraction, pattern)` returns {policy: {metric: value}}; with no argument,
    for the sliders' current position. A move to a new point at 8 MiB runs three machines in
    about half a second of CPU; a point seen before only redraws.
    """

    def __init__(self, arch: str = "x86_64", sizes_mib=(1, 2, 4, 8), policies=("copy", "shared", "upper_wp"), fractions: int = 10, seed: int = 0):
        if arch not in ARCHES:
            raise ValueError(f"arch must be one of {sorted(ARCHES)}, not {arch!r}")
        room = ARCHES[arch].task_size - _first_table_boundary(ARCHES[arch])
        if isinstance(sizes_mib, (str, bytes)) or not isinstance(sizes_mib, (tuple, list)) or not sizes_mib:
            raise ValueError(f"sizes_mib must be a non-empty tuple of sizes in MiB, not {sizes_mib!r}")
        for s in sizes_mib:
            if not isinstance(s, int) or isinstance(s, bool) or s <= 0 or s << 20 > room:
                raise ValueError(f"sizes_mib: {s!r} is not a positive whole number of MiB that fits the {arch} address space")
        if isinstance(policies, str) or not isinstance(policies, (tuple, list)) or not policies or any(p not in POLICIES for p in policies) or len(set(policies)) != len(policies):
            raise ValueError(f"policies must be distinct names from {sorted(POLICIES)}, not {policies!r}")
        if not isinstance(fractions, int) or isinstance(fractions, bool) or fractions < 1:
            raise ValueError(f"fractions must be a positive int (the slider's steps from 0 to 1), not {fractions!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int, not {seed!r}")
        self.arch, self.policies, self.seed = arch, tuple(policies), seed
        self._cache: dict[tuple, dict[str, dict[str, int]]] = {}
        wide = {"description_width": "130px"}
        self.size = widgets.SelectionSlider(options=list(sizes_mib), value=sizes_mib[len(sizes_mib) // 2], description="MiB mapped", continuous_update=False, style=wide)
        # From no write at all (what sharing saves at fork) upwards, a step at a time.
        self.fraction = widgets.SelectionSlider(options=[round(i / fractions, 6) for i in range(fractions + 1)], value=0.0, description="fraction written", continuous_update=False, style=wide)
        self.pattern = widgets.ToggleButtons(options=WRITE_PATTERNS, description="pages written", style=wide)
        self.picture = _picture()
        self.numbers = _log("ptsim-counters")
        for control in (self.size, self.fraction, self.pattern):
            control.observe(lambda change: self._show(), names="value")
        super().__init__([self.size, self.fraction, self.pattern, self.picture, self.numbers])
        self.add_class("ptsim-cost")
        self._show()

    def __repr__(self) -> str:
        return f"CostExplorer(arch={self.arch!r}, policies={self.policies!r})"

    def values(self, size_mib: int | None = None, fraction: float | None = None, pattern: str | None = None) -> dict[str, dict[str, int]]:
        size_mib = self.size.value if size_mib is None else size_mib
        fraction = self.fraction.value if fraction is None else fraction
        pattern = self.pattern.value if pattern is None else pattern
        key = (size_mib, fraction, pattern)
        if key not in self._cache:
            self._cache[key] = {p: fork_cost(self.arch, p, size_mib << 20, fraction, pattern, self.seed) for p in self.policies}
        return self._cache[key]

    def figure(self) -> Figure:
        """The bar charts for the sliders' position, as the view shows them."""
        values = self.values()
        fig = Figure(figsize=(picture_width(), 3.4), layout="constrained")
        axes = fig.subplots(1, len(COST_METRICS))
        small = max(style.SMALL, style.smallest_points(fig))
        for ax, (metric, label) in zip(axes, COST_METRICS.items()):
            heights = [values[p][metric] for p in self.policies]
            bars = ax.bar(self.policies, heights, color=[POLICY_COLOURS[p] for p in self.policies])
            ax.bar_label(bars, fontsize=small)
            ax.set_title(label, fontsize=style.TEXT)
            ax.tick_params(labelsize=small)
            ax.tick_params(axis="x", rotation=30)
            ax.set_ylim(0, max(1, *heights) * 1.2)  # counts: from zero, whole numbers
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(f"{self.arch}: fork of {self.size.value} MiB, then the parent writes {self.fraction.value:.0%} of its pages ({self.pattern.value})", fontsize=10)
        return fig

    def _show(self) -> None:
        values = self.values()
        self.picture.value = png(self.figure())
        labels = {m: label.replace("\n", " ") for m, label in COST_METRICS.items()}
        width = max(map(len, labels.values()))
        rows = [f"{'':<{width}}" + "".join(f"{p:>10}" for p in self.policies)]
        rows += [f"{label:<{width}}" + "".join(f"{values[p][m]:>10}" for p in self.policies) for m, label in labels.items()]
        self.numbers.value = _pre("\n".join(rows))
