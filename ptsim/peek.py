"""Read-only looks into a machine, for the book and for exercises.

Each function reads the machine's state (its tables, `mem_map`, counters) and changes nothing;
none re-derives what the kernel does. The chapters print what they return, exercises compute
answers with them, and challenge goals (`ptsim.exercises`) test states with them:

    t = pte_table(p, a)                  # frame of the last-level table p reaches for a
    print(show_table(p, a))              # its non-empty entries, in hex
    use_count(c, a)                      # how many upper entries point at that table
    list_tables(m), table_pages(m)       # every page-table page; how many the machine holds
    walk_tables(m.kernel, p.mm.pgd)      # (frame, level, base) of each table under a root, MMU order
    before = m.counters; c.write(a, b"x"); counters_gained(m, before)
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral
from typing import NamedTuple

import numpy as np

from .errors import ProcessExited
from .hardware.arch import _PAGE_PRESENT, _PAGE_RW, PFN_SHIFT
from .kernel import COUNTERS
from .kernel.core import MAPPED, Kernel
from .kernel.page import PG_PGTABLE
from .machine import Machine, Process


def walk_tables(k: Kernel, pgd: int):
    """Yield (table, level, base) for every table reachable from `pgd`, root first, in entry
    order (depth first, as the MMU would meet them)."""
    arch, tables = k.arch, k.phys.tables
    stack = [(pgd, 0, 0)]
    while stack:
        table, level, base = stack.pop()
        yield table, level, base
        if level < arch.levels - 1:
            row = tables[table]
            indexes = np.flatnonzero(row & _PAGE_PRESENT)
            children = k.pfns_of(row[indexes])
            shift = arch.shift(level)
            stack.extend((int(c), level + 1, base + (int(i) << shift)) for i, c in zip(indexes[::-1], children[::-1]))


def _live(p: Process, name: str = "p") -> None:
    if not isinstance(p, Process):
        raise ValueError(f"{name} must be a ptsim Process, not {p!r}")
    if p.exited:
        raise ProcessExited(f"process {p.pid} has exited")


def _address(p: Process, addr) -> int:
    task_size = p.machine.arch.task_size
    if not isinstance(addr, Integral) or isinstance(addr, bool) or not 0 <= addr < task_size:
        raise ValueError(f"addr must be an int in [0, {task_size:#x}), not {addr!r}")
    return int(addr)


def pte_table(p: Process, addr: int) -> int | None:
    """The frame of the last-level table that maps `addr` for `p`, read from p's upper entry
    (Linux: the pmd entry), or None when p has no table there."""
    _live(p)
    k = p.machine.kernel
    return k.slot_table(k.pmd_slot(p.mm, _address(p, addr)))


def use_count(p: Process, addr: int) -> int:
    """The use count of the last-level table that maps `addr` for `p`: how many upper entries,
    in all processes, point at it (the refcount of its frame). 0 when `p` has no table there."""
    table = pte_table(p, addr)
    return 0 if table is None else int(p.machine.kernel.mem_map.refcount[table])


def show_table(p: Process, addr: int) -> str:
    """The last-level table that maps `addr` for `p`, as text to print: a line naming its frame
    and use count, then one line per non-empty entry, in hex, with what it holds (a frame and
    whether it is writable, a PROT_NONE page, or a swap entry). Empty entries are left out, so
    that an x86_64 table of 512 entries prints only what it maps."""
    table = pte_table(p, addr)
    k = p.machine.kernel
    base = int(addr) & ~(k.arch.pte_span - 1)
    where = f"pid {p.pid}, {base:#x}-{base + k.arch.pte_span - 1:#x}"
    if table is None:
        return f"{where}: no pte table"
    frames = len(k.mem_map.refcount)
    # Every entry of this machine prints at one width: that of its highest frame's entry.
    digits = ((((frames - 1) << PFN_SHIFT) | ((1 << PFN_SHIFT) - 1)).bit_length() + 3) // 4
    frame_width, index_width = len(str(frames - 1)), len(str(k.arch.entries - 1))
    lines = [f"{where}: pte table in frame {table}, use count {int(k.mem_map.refcount[table])}"]
    for i, e in enumerate(k.phys.tables[table].tolist()):
        if not e:
            continue
        if not e & MAPPED:
            held = f"swap slot {k.entry_pfn(e)}"
        else:
            rights = "PROT_NONE" if not e & _PAGE_PRESENT else "RW" if e & _PAGE_RW else "read-only"
            held = f"-> frame {k.entry_pfn(e):{frame_width}}  {rights}"
        lines.append(f"  [{i:{index_width}}] {e:#0{digits + 2}x}  {held}")
    return "\n".join(lines)


class Table(NamedTuple):
    """One page-table page: its frame, level (0 = root), the first virtual address it maps,
    its use count, and the live processes that reach it."""

    frame: int
    level: int
    name: str  # Linux's name for its level: "pgd", "pmd", "pte", ...
    base: int
    use_count: int
    pids: tuple[int, ...]


def list_tables(obj: Machine | Process) -> list[Table]:
    """Every page-table page the live processes reach, each once, by level then address;
    for a Process, only those it reaches."""
    if not isinstance(obj, (Machine, Process)):
        raise ValueError(f"obj must be a ptsim Machine or Process, not {obj!r}")
    if isinstance(obj, Process):
        _live(obj, "obj")
    k = (obj if isinstance(obj, Machine) else obj.machine).kernel
    found: dict[int, tuple[int, int]] = {}  # frame -> (level, base)
    reached: dict[int, list[int]] = {}
    for task in k.tasks.values():
        if not task.exited:
            for frame, level, base in walk_tables(k, task.mm.pgd):
                found[frame] = (level, base)
                reached.setdefault(frame, []).append(task.pid)
    rows = [
        Table(frame, level, k.arch.level_names[level], base, int(k.mem_map.refcount[frame]), tuple(sorted(reached[frame])))
        for frame, (level, base) in found.items()
    ]
    if isinstance(obj, Process):
        rows = [t for t in rows if obj.pid in t.pids]
    return sorted(rows, key=lambda t: (t.level, t.base, t.pids))


def table_pages(m: Machine) -> int:
    """Page-table pages the machine holds, every level, roots included; a shared table once."""
    if not isinstance(m, Machine):
        raise ValueError(f"m must be a ptsim Machine, not {m!r}")
    return int(np.count_nonzero(m.kernel.mem_map.kind == PG_PGTABLE))


def counters_gained(m: Machine, before: Mapping[str, int]) -> dict[str, int]:
    """What `m`'s counters gained since `before`, an earlier copy of `m.counters`: the counters
    that moved, in the kernel's order (`ptsim.kernel.COUNTERS`), each with how much."""
    if not isinstance(m, Machine):
        raise ValueError(f"m must be a ptsim Machine, not {m!r}")
    if not isinstance(before, Mapping) or not all(
        name in COUNTERS and isinstance(n, Integral) and not isinstance(n, bool) and n >= 0 for name, n in before.items()
    ):
        raise ValueError(f"before must be an earlier copy of m.counters (counter names to counts), not {before!r}")
    now = m.counters
    ahead = [name for name, n in before.items() if n > now.get(name, 0)]
    if ahead:
        raise ValueError(f"before must be an earlier copy of this machine's counters; it counts more {', '.join(ahead)} than the machine has")
    return {name: now[name] - before.get(name, 0) for name in COUNTERS if now.get(name, 0) != before.get(name, 0)}
