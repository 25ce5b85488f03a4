"""The model behind every picture: a networkx graph read from the machine's real state.

Nothing here re-derives kernel logic. The graph is what the tables in simulated physical
memory say, decoded with the kernel's own helpers (`Kernel.pfns_of`, `MAPPED`, the x86 bit
constants), and what `mem_map` says about each frame (use count, refcount, mapcount, kind).

Nodes:
    ("proc", pid)    kind="proc", pid, pgd
    ("table", pfn)   kind="table", level (0 = root), level_name ("pgd", ..., "pte"),
                     use_count (the table page's refcount in mem_map), sharers (pids of the
                     drawn processes that reach it), start/end (addresses it maps), summary
    ("frame", pfn)   kind "anon" / "zero" / "shmem", mapcount, refcount, mappers (pids)
    ("swap", slot)   kind="swap": a page out on the swap device, held by a swap entry
Edges:
    proc -> pgd      kind="cr3"
    table -> child   kind="entry": index, indexes (every entry of the table that points at
                     this child: several only for the zero page), start/end (addresses of
                     the first), entry (its raw value), present, rw, user, accessed, dirty,
                     protnone, and cow: the entry maps a page read-only although its VMA is
                     private and writable, i.e. it is write-protected for copy-on-write (for
                     an upper entry: RW clear, as policy upper_wp write-protects a shared table).
"""

from __future__ import annotations

from collections.abc import Iterable
from numbers import Integral

import networkx as nx
import numpy as np

from ..hardware.arch import _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_RW, _PAGE_USER
from ..kernel.core import MAPPED, Kernel, Task
from ..kernel.page import PG_SHMEM, ZERO_PFN
from ..machine import Machine, Process
from ..peek import walk_tables

_BITS = (("present", _PAGE_PRESENT), ("rw", _PAGE_RW), ("user", _PAGE_USER), ("accessed", _PAGE_ACCESSED), ("dirty", _PAGE_DIRTY),
         ("protnone", _PAGE_PROTNONE))


def kernel_of(machine) -> Kernel:
    if not isinstance(machine, Machine):
        raise ValueError(f"machine must be a ptsim.Machine, not {type(machine).__name__}")
    return machine.kernel


def tasks_of(machine, processes) -> list[Task]:
    """The live tasks to draw, by pid: every live one for None, else the Processes or pids
    given (one, or an iterable). Anything else, a stranger's or an exited process: ValueError."""
    k = kernel_of(machine)
    if processes is None:
        return [t for _, t in sorted(k.tasks.items()) if not t.exited]
    if isinstance(processes, (Process, Integral)) and not isinstance(processes, bool):
        processes = [processes]
    if isinstance(processes, (str, bytes)) or not isinstance(processes, Iterable):
        raise ValueError(f"processes must be None, a Process, a pid or a list of them, not {type(processes).__name__}")
    tasks = {}
    for p in processes:
        if isinstance(p, Process):
            if p.machine is not machine:
                raise ValueError(f"processes: {p!r} runs on another machine")
            task = p._task
        elif isinstance(p, Integral) and not isinstance(p, bool):
            p = int(p)
            if p not in k.tasks:
                raise ValueError(f"processes: no process with pid {p} on this machine")
            task = k.tasks[p]
        else:
            raise ValueError(f"processes must hold Processes or pids, not {type(p).__name__}")
        if task.exited:
            raise ValueError(f"processes: process {task.pid} has exited")
        tasks[task.pid] = task
    if not tasks:
        raise ValueError("processes: the list is empty")
    return [tasks[pid] for pid in sorted(tasks)]


def frame_kind(k: Kernel, pfn: int) -> str:
    if pfn == ZERO_PFN:
        return "zero"
    return "shmem" if k.mem_map.kind[pfn] == PG_SHMEM else "anon"


def private_writable(k: Kernel, mm, start: int, pages: int) -> np.ndarray:
    """For each of `pages` pages from `start`, whether a private writable VMA of `mm` holds it:
    there, an entry that maps a page read-only is write-protected for copy-on-write."""
    shift, end = k.arch.page_shift, start + (pages << k.arch.page_shift)
    allowed = np.zeros(pages, dtype=bool)
    for vma in mm.vmas_in(start, end):
        if vma.writable and not vma.shared:
            allowed[(max(vma.start, start) - start) >> shift : (min(vma.end, end) - start) >> shift] = True
    return allowed


def table_graph(machine, processes=None) -> nx.DiGraph:
    """Processes -> page-table pages level by level -> data frames, as the machine holds them."""
    k = kernel_of(machine)
    tasks = tasks_of(machine, processes)
    arch, tables, mem_map = k.arch, k.phys.tables, k.mem_map
    g = nx.DiGraph(arch=arch.name, policy=machine.policy, pids=tuple(t.pid for t in tasks))
    for task in tasks:
        mm, pid = task.mm, task.pid
        proc = ("proc", pid)
        g.add_node(proc, kind="proc", pid=pid, pgd=mm.pgd)
        g.add_edge(proc, ("table", mm.pgd), kind="cr3")
        for table, level, base in walk_tables(k, mm.pgd):
            node = ("table", table)
            if node in g and "level" in g.nodes[node]:  # a shared table, met again
                g.nodes[node]["sharers"] += (pid,)
                continue
            g.add_node(node, kind="table", level=level, level_name=arch.level_names[level], use_count=int(mem_map.refcount[table]),
                       sharers=(pid,), start=base, end=base + arch.span(level))
            _add_entries(g, k, mm, node, tables[table], level, base)
    for node, data in g.nodes(data=True):
        if data["kind"] in ("anon", "zero", "shmem", "swap"):
            data["mappers"] = tuple(sorted({pid for parent in g.predecessors(node) for pid in g.nodes[parent]["sharers"]}))
    return g


def _add_entries(g: nx.DiGraph, k: Kernel, mm, node, row: np.ndarray, level: int, base: int) -> None:
    arch, mem_map = k.arch, k.mem_map
    leaf = level == arch.levels - 1
    indexes = np.flatnonzero(row)
    entries = row[indexes]
    pfns = k.pfns_of(entries)
    mapped = (entries & MAPPED) != 0 if leaf else (entries & _PAGE_PRESENT) != 0
    if leaf:
        # The VMAs are those of the first process met: every sharer's agree over a shared table.
        cow = mapped & ((entries & _PAGE_RW) == 0) & private_writable(k, mm, base, arch.entries)[indexes]
    else:
        cow = (entries & _PAGE_RW) == 0
    g.nodes[node]["summary"] = {"used": len(indexes), "mapped": int(mapped.sum()), "rw": int(np.count_nonzero(entries[mapped] & _PAGE_RW)),
                                "cow": int(cow.sum()), "swap": int((~mapped).sum())}
    step = 1 << arch.shift(level)
    bits = {name: ((entries & bit) != 0).tolist() for name, bit in _BITS}
    edges: dict[tuple, dict] = {}
    for i, (index, entry, pfn, is_mapped) in enumerate(zip(indexes.tolist(), entries.tolist(), pfns.tolist(), mapped.tolist())):
        child = ("table", pfn) if not leaf else (("frame" if is_mapped else "swap"), pfn)
        if child in edges:  # the zero page, mapped at several entries of one table
            edges[child]["indexes"] += (index,)
            continue
        start = base + index * step
        edges[child] = {"kind": "entry", "index": index, "indexes": (index,), "start": start, "end": start + step, "entry": entry,
                        "cow": bool(cow[i]), **{name: values[i] for name, values in bits.items()}}
        if child not in g:
            if child[0] == "frame":
                g.add_node(child, kind=frame_kind(k, pfn), pfn=pfn, mapcount=int(mem_map.mapcount[pfn]), refcount=int(mem_map.refcount[pfn]))
            elif child[0] == "swap":
                g.add_node(child, kind="swap", slot=pfn)
    g.add_edges_from((node, child, data) for child, data in edges.items())
