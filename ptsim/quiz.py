"""Seeded self-checking problems, as OSTEP's homework simulators make them.

    python -m ptsim.quiz --topic translate -s 7 -n 5           # five problems
    python -m ptsim.quiz --topic translate -s 7 -n 5 -c        # the same five, with answers
    python -m ptsim.quiz -t cow -s ada --level 3 --choices 4   # student "ada", hard, multiple choice
    python -m ptsim.quiz -t translate,calls --sheet DIR --students ids.txt   # exam sheets and keys

A problem's scenario is ptsim code, shown in the question and run as shown; its answer is what
the machine then does: the MMU's walk (translate), the counters of one fork (fork-copy), the use
counts and page-table pages held (shared), the fault each access takes (cow). The inverse topic
(calls) shows a final state, the processes and the use count of every table, and asks which of
several call sequences produced it, as OSTEP's fork.py -t does.

The seed (`-s`) is a number or any string, a student's id: it is hashed with
`ptsim.exercises.student_rng`, so the same topic, seed, geometry and level give the same problems
on every machine. The knobs: the geometry (`--arch`, for the topics whose scenarios fit any
geometry), how many problems (`-n`), the difficulty (`--level` 1 to 3: more regions, processes,
calls and accesses) and multiple choice (`--choices K`), whose wrong options are the mistakes
each problem's diagnosis recognises, so that the key says why each one is wrong.
"""

from __future__ import annotations

import argparse
import re
import shlex
from html import escape
import textwrap
from pathlib import Path
from types import SimpleNamespace

import ptsim

from .errors import ProcessExited, SegmentationFault
from .exercises import _LETTERS, FAULT_KINDS, Exercise, normal, observe, student_rng
from .hardware import ARCHES, PageFault
from .hardware.arch import _PAGE_PRESENT, _PAGE_RW, _PAGE_USER, PFN_SHIFT
from .kernel.core import MAPPED
from .kernel.page import ZERO_PFN
from .peek import list_tables, table_pages, use_count

LEVELS = (1, 2, 3)
FRAMES = 256  # physical memory of every problem's machine: frame numbers stay two hex digits


class Geometry:
    """What a problem needs to know of its machine's geometry (a key of ptsim.ARCHES)."""

    def __init__(self, name: str):
        self.name, self.arch = name, ARCHES[name]
        self.page = self.arch.page_size
        self.span = self.arch.pte_span  # what one last-level table maps
        self.ram = FRAMES * self.page
        self.slots = self.arch.task_size // self.span  # table-aligned places a region may start
        self.digits = ((self.arch.task_size - 1).bit_length() + 3) // 4

    def hex(self, addr: int) -> str:
        """A virtual address at the width of the largest one."""
        return f"{addr:#0{self.digits + 2}x}"

    def machine_line(self, policy: str) -> str:
        return f'm = ptsim.Machine(arch="{self.name}", policy="{policy}", ram={self.ram:#x})'


def _run(lines: list[str], ns: dict | None = None) -> dict:
    """Run scenario lines as they are shown; the namespace holds what they made."""
    ns = {"ptsim": ptsim} if ns is None else ns
    exec("\n".join(lines), ns)
    return ns


def _regions(rng, g: Geometry, count: int, min_pages: int, max_pages: int) -> list[tuple[int, int]]:
    """`count` disjoint [start, end) ranges, each starting on a table boundary or a few pages
    after it, none reaching the next one's table."""
    slots = sorted(rng.sample(range(1, g.slots - 2), count))
    regions = []
    for slot, after in zip(slots, slots[1:] + [g.slots]):
        skew = rng.randrange(0, 3)
        room = min((after - slot) * (g.span // g.page) - skew, max_pages)
        pages = rng.randint(min(min_pages, room), room)
        start = slot * g.span + skew * g.page
        regions.append((start, start + pages * g.page))
    return regions


def _pages(g: Geometry, start: int, end: int) -> list[int]:
    return list(range(start, end, g.page))


def _touch(rng, proc: str, addr: int, write: bool) -> str:
    return f'{proc}.write({addr:#x}, b"{rng.choice("abcdefgh")}")' if write else f"{proc}.read({addr:#x}, 1)"


def _spec(prompt, scenario, question, explain, mistakes, hint, show=str, diagnose=None, choices=0) -> SimpleNamespace:
    """What a topic makes: an Exercise's parts, and `mistakes(state, answer)`, the wrong answers
    the problem recognises ({answer: why it is wrong}), which multiple choice offers; `choices`:
    how many options it offers when the quiz asks for open answers (0: none, an open question)."""
    return SimpleNamespace(prompt=prompt, scenario=scenario, question=question, explain=explain, mistakes=mistakes, hint=hint, show=show,
                           diagnose=diagnose, choices=choices)


# -- translate -------------------------------------------------------------------------------

# Translate's answer classes, drawn with equal probability: a read that reaches a byte, a write
# that reaches one, and an access that faults (not present or, for a write, protection, evenly
# where both can happen).
OUTCOMES = ("read", "write", "fault")


def _geometry(g: Geometry) -> list[str]:
    arch = g.arch
    fields = [f"{arch.shift(level) + arch.index_bits - 1}-{arch.shift(level)} index the {name}" for level, name in enumerate(arch.level_names)]
    return [
        f"Geometry {g.name}: {arch.levels} levels ({', '.join(arch.level_names)}) of {arch.entries} entries, {g.page}-byte pages.",
        f"Virtual address bits {', '.join(fields)}, {arch.page_shift - 1}-0 are the offset.",
        f"An entry: PFN from bit {PFN_SHIFT} up; bit 0 P (present), 1 RW (writable), 2 US (user), 5 A, 6 D.",
        f"A physical address is PFN * {g.page} + offset.",
    ]


def _bits(entry: int) -> str:
    return " ".join(f"{name}={int(bool(entry & bit))}" for name, bit in (("P", _PAGE_PRESENT), ("RW", _PAGE_RW), ("US", _PAGE_USER)))


def _walk(k, g: Geometry, pgd: int, va: int) -> list[tuple[str, int, int, int]]:
    """The walk a student does by hand: (level name, index, table frame, entry) for each level,
    until an entry is not present."""
    steps, table = [], pgd
    for level, name in enumerate(g.arch.level_names):
        index = g.arch.index(level, va)
        entry = k.entry(table, index)
        steps.append((name, index, table, entry))
        if not entry & _PAGE_PRESENT:
            break
        table = k.entry_pfn(entry)
    return steps


def _row(g: Geometry, row) -> str:
    """A table's entries: all of a toy table's 8, else only the non-empty ones, by index."""
    if g.arch.entries <= 8:
        return " ".join(f"{int(e):#07x}" for e in row)
    return " ".join(f"[{i}] {int(e):#07x}" for i, e in enumerate(row) if e) or "(empty)"


def _translate(rng, g: Geometry, level: int) -> SimpleNamespace:
    outcome = rng.choice(OUTCOMES)
    lines = [g.machine_line("copy"), "p = m.spawn()"]
    regions = _regions(rng, g, {1: 1, 2: rng.randint(1, 3), 3: rng.randint(2, 4)}[level], 2, 12)
    for i, (start, end) in enumerate(regions):
        prot = "rw" if i == 0 else rng.choice(["rw", "rw", "r"])
        lines.append(f'p.mmap(addr={start:#x}, length={end - start:#x}, prot="{prot}")')
        touched = rng.sample(_pages(g, start, end), rng.randint(1, (end - start) // g.page))
        for j, addr in enumerate(touched):  # the first region's first touch writes: a write can reach a byte
            lines.append(_touch(rng, "p", addr, prot == "rw" and (i == j == 0 or rng.random() < 0.7)))
    if level == 3:  # fork write-protects p's private pages; writes after it make some writable again
        start, end = regions[0]
        lines += ["c = p.fork()"] + [_touch(rng, "p", a, True) for a in rng.sample(_pages(g, start, end), rng.randint(1, 2))]

    # Choose the outcome first, then an access that has it on this machine.
    ns = _run(lines)
    k, pgd = ns["m"].kernel, ns["p"].mm.pgd
    far = [rng.randrange(g.arch.mmap_min_addr // g.page, g.arch.task_size // g.page) * g.page for _ in range(3)]
    found = {"read": [], "write": [], "not present": [], "protection": []}
    for page in sorted({a for start, end in regions for a in _pages(g, start, end)} | set(far)):
        for write in (False, True):
            try:
                k.mmu.walk(pgd, page, write)
                found["write" if write else "read"].append((page, write))
            except PageFault as fault:
                found["protection" if fault.protection else "not present"].append((page, write))
    if not found["not present"]:  # every address tried is mapped: page 0 never is (mmap_min_addr)
        found["not present"].append((0, False))
    if outcome == "fault":
        outcome = "protection" if found["protection"] and rng.random() < 0.5 else "not present"
    page, write = rng.choice(found[outcome])
    va = page + rng.randrange(g.page)

    def scenario():
        ns = _run(lines)
        k, p = ns["m"].kernel, ns["p"]
        dump = [f"frame {t.frame:#04x} ({t.name}): " + _row(g, k.phys.tables[t.frame]) for t in list_tables(p)]
        return SimpleNamespace(lines=lines, m=ns["m"], p=p, va=va, write=write, dump=dump, walk=_walk(k, g, p.mm.pgd, va), fault=None)

    def prompt(s):
        layout = f"{g.arch.entries} entries each, index 0 first" if g.arch.entries <= 8 else "the non-empty entries, [index] value"
        return "\n".join(
            s.lines
            + _geometry(g)
            + [f"Page tables of p (CR3 = frame {s.p.mm.pgd:#x}), {layout}:"]
            + ["  " + row for row in s.dump]
            + [f"Q: p {'writes' if write else 'reads'} the byte at {g.hex(va)}. Which physical address does the MMU reach? (or: fault)"]
        )

    def question(s):
        """The hardware's own walk (which sets A and D, after the prompt has been taken)."""
        try:
            pfn, _ = s.m.kernel.mmu.walk(s.p.mm.pgd, s.va, s.write)
        except PageFault as fault:
            s.fault = fault
            return "fault"
        return pfn * g.page + s.va % g.page

    def explain(s, answer):
        indexes = ", ".join(f"{name} index {index}" for name, index, _, _ in s.walk)
        out = [f"{g.hex(s.va)}: {indexes}, offset {s.va % g.page:#x}"]
        out += [f"{name}[{index}] in frame {table:#x} = {entry:#07x} ({_bits(entry)})" for name, index, table, entry in s.walk]
        if s.fault is None:
            out.append(f"so the {'write' if s.write else 'read'} reaches {answer // g.page:#x} * {g.page} + {s.va % g.page:#x} = {answer:#x}.")
        elif s.fault.protection:
            out.append("so the write faults: the page is present but RW is 0 on the way (a protection fault).")
        else:
            out.append("so the access faults: the walk stops at an entry whose P is 0 (not present).")
        return "\n" + "\n".join(out)

    def mistakes(s, answer):
        offset = s.va % g.page
        name, index, _, entry = s.walk[-1]
        if s.fault is not None and not s.fault.protection:
            return {s.m.kernel.entry_pfn(entry) * g.page + offset: f"{name}[{index}] = {entry:#x} has P = 0: the MMU uses no PFN from it; the walk stops there and the access faults."}
        pfn = s.m.kernel.entry_pfn(entry)
        if s.fault is not None:
            return {pfn * g.page + offset: "the page is mapped, but RW is 0 on the way: a write faults (protection), and the kernel then decides."}
        known = {
            pfn: f"that is the frame number; the address is PFN * {g.page} + offset.",
            (pfn << 12) | offset: f"a {g.name} page is {g.page} bytes, not 4096: PFN * {g.page} + offset.",
            pfn * g.page: f"you left out the offset, the low {g.arch.page_shift} bits of the address ({offset:#x}).",
            "fault": "every entry on the walk has P set" + (" and RW set" if s.write else "") + ": no fault.",
        }
        known.pop(answer, None)
        return known

    def diagnose(s, answer, given):
        if s.fault is not None and isinstance(given, int):
            return "the walk faults: " + ("RW is 0 on the way, and this is a write." if s.fault.protection else "it reaches an entry whose P bit is 0.")
        return None

    return _spec(prompt, scenario, question, explain, mistakes, "walk one level at a time, from CR3.", show=hex, diagnose=diagnose)


# -- fork-copy -------------------------------------------------------------------------------

# Regions a fork-copy scenario maps: (prot, MAP_SHARED, whether p writes into it).
_FORK_REGIONS = [("rw", False, True), ("rw", False, False), ("r", False, False), ("rw", True, True)]


def _fork_copy(rng, g: Geometry, level: int) -> SimpleNamespace:
    lines = [g.machine_line("copy"), "p = m.spawn()"]
    kinds = [_FORK_REGIONS[0]] + rng.sample(_FORK_REGIONS, {1: 1, 2: rng.randint(1, 2), 3: rng.randint(2, 3)}[level])
    regions = _regions(rng, g, len(kinds), 3, 12)
    for (start, end), (prot, shared, writes) in zip(regions, kinds):
        lines.append(f'p.mmap(addr={start:#x}, length={end - start:#x}, prot="{prot}"' + (", shared=True)" if shared else ")"))
        for addr in rng.sample(_pages(g, start, end), rng.randint(1, (end - start) // g.page)):
            lines.append(_touch(rng, "p", addr, writes and rng.random() < 0.7))
    if level == 3 or (level == 2 and rng.random() < 0.4):  # an earlier fork leaves entries read-only that the last fork finds so
        lines.append("c0 = p.fork()")
        start, end = regions[0]
        lines += [_touch(rng, "p", a, True) for a in rng.sample(_pages(g, start, end), rng.randint(1, 3))]
    counter = rng.choice(["ptes_copied", "ptes_wrprotected"])

    def scenario():
        ns = _run(lines)
        k, mm = ns["m"].kernel, ns["p"].mm
        vmas = []
        for vma in mm.vmas:
            entries = [k.follow_pte(mm, a) for a in _pages(g, vma.start, vma.end)]
            mapped = [e for e in entries if e & MAPPED]
            vmas.append(SimpleNamespace(
                vma=vma,
                copied=k.policy.vma_needs_copy(vma),
                mapped=len(mapped),
                writable=sum(1 for e in mapped if e & _PAGE_RW),
                zero=sum(1 for e in mapped if k.entry_pfn(e) == ZERO_PFN),
            ))
        return SimpleNamespace(ns=ns, vmas=vmas)

    def prompt(s):
        what = "copy into c" if counter == "ptes_copied" else "write-protect in p (clear RW for copy-on-write)"
        return "\n".join(lines + ["Then: c = p.fork()", f"Q: how many page-table entries does fork (copy_page_range) {what}?"])

    def question(s):
        return observe(s.ns["m"], lambda: _run(["c = p.fork()"], s.ns)).counters.get(counter, 0)

    def explain(s, answer):
        out = []
        for v in s.vmas:
            where = f"{g.hex(v.vma.start)}-{g.hex(v.vma.end - 1)} {'shared' if v.vma.shared else 'private'} {v.vma.prot or 'none'}"
            has = f"{v.mapped} entries map pages ({v.zero} of them the zero page), {v.writable} writable"
            if v.copied:
                out.append(f"{where}: {has}; it has anonymous pages, so all {v.mapped} are copied, and the writable ones ({v.writable}) write-protected.")
            elif v.vma.shared:
                out.append(f"{where}: {has}; MAP_SHARED memory is not copied: c faults its pages in from the shmem object.")
            else:
                out.append(f"{where}: {has}; no anonymous page yet, so it is not copied: c faults them in again.")
        return "\n" + "\n".join(out)

    def mistakes(s, answer):
        known = {}
        if counter == "ptes_copied":
            known[sum(v.mapped - v.zero for v in s.vmas if v.copied)] = "entries that map the zero page are copied too, in a VMA that is copied."
            known[sum(v.mapped for v in s.vmas)] = "copy_page_range skips VMAs with no anonymous page (only the zero page, or MAP_SHARED): the child faults those in."
        else:
            known[sum(v.writable for v in s.vmas)] = "MAP_SHARED entries keep RW, and VMAs that are not copied are not touched."
            known[sum(v.mapped for v in s.vmas if v.copied)] = "only writable entries are write-protected; read-only ones (the zero page, pages an earlier fork left read-only) stay as they are."
        known.pop(answer, None)
        return known

    return _spec(prompt, scenario, question, explain, mistakes, "go VMA by VMA: which does copy_page_range copy?")


# -- shared, and the inverse question (calls) ---------------------------------------------------


def _steps(rng, g: Geometry, start: int, end: int, count: int, most: int, actions: list[str]) -> list[str]:
    """`count` calls on a shared-policy machine whose p maps [start, end): forks (at most `most`
    processes alive), writes, munmaps (of a whole table or part of one) and exits; the first
    is a fork."""
    lines, mapped = [], {"p": set(_pages(g, start, end))}  # what each live process may touch
    for step in range(count):
        live = sorted(mapped)
        action = "fork" if step == 0 else rng.choice(actions)
        if action == "fork" and len(mapped) < most:
            parent, child = rng.choice(live), f"c{step + 1}"
            lines.append(f"{child} = {parent}.fork()")
            mapped[child] = set(mapped[parent])
        elif action == "exit" and len(live) > 2:
            who = rng.choice([n for n in live if n != "p"])
            lines.append(f"{who}.exit()")
            del mapped[who]
        elif action == "munmap":
            who = rng.choice(live)
            table = rng.randrange(start // g.span, (end - 1) // g.span + 1) * g.span
            first = rng.choice([table, table + rng.randrange(1, 6) * g.page])  # a whole table, or part of one
            last = min(rng.choice([table + g.span, first + rng.randint(1, 3) * g.page]), table + g.span)
            lines.append(f"{who}.munmap({first:#x}, {last - first:#x})")
            mapped[who] -= set(range(first, last, g.page))
        elif mapped[who := rng.choice(live)]:  # a write; also what a fork or exit that cannot be becomes
            lines.append(_touch(rng, who, rng.choice(sorted(mapped[who])), True))
    return lines


def _shared_start(rng, g: Geometry) -> tuple[list[str], int, int]:
    """A machine, p, and a region of two or three tables that p has half written."""
    start = rng.randrange(1, g.slots - 3) * g.span
    end = start + rng.randint(12, 24) * g.page
    lines = [g.machine_line("shared"), "p = m.spawn()", f"p.mmap(addr={start:#x}, length={end - start:#x})"]
    lines += [_touch(rng, "p", a, True) for a in sorted(rng.sample(_pages(g, start, end), (end - start) // g.page // 2))]
    return lines, start, end


def _names(lines: list[str]) -> list[str]:
    """The processes the lines make, in order."""
    return [m[1] for m in re.finditer(r"^(\w+) = (?:m\.spawn|\w+\.fork)\(\)", "\n".join(lines), re.M)]


_SHARED_STEPS = {1: (2, 3, 3, ["fork", "write"]), 2: (3, 5, 4, ["fork", "fork", "write", "write", "write", "munmap", "exit"]),
                 3: (5, 7, 5, ["fork", "fork", "write", "write", "munmap", "munmap", "exit"])}


def _shared(rng, g: Geometry, level: int) -> SimpleNamespace:
    lines, start, end = _shared_start(rng, g)
    low, high, most, actions = _SHARED_STEPS[level]
    lines += _steps(rng, g, start, end, rng.randint(low, high), most, actions)

    def scenario():
        ns = _run(lines)
        names = [n for n in _names(lines) if not ns[n].exited]
        return SimpleNamespace(ns=ns, m=ns["m"], live=names, names={ns[n].pid: n for n in names})

    # What to ask about is drawn from the processes alive at the end.
    alive = scenario().live
    who = rng.choice(alive)
    addr = rng.choice(_pages(g, start, end))
    asks_count = rng.random() < 0.6

    def prompt(s):
        if asks_count:
            q = f"Q: what is the use count of the page-table page that maps {g.hex(addr)} for {who}? (0 if {who} has none there)"
        else:
            q = "Q: how many page-table pages does the machine hold now, at every level?"
        return "\n".join(lines + [q])

    def question(s):
        return use_count(s.ns[who], addr) if asks_count else table_pages(s.m)

    def explain(s, answer):
        tables = list_tables(s.m)
        per_level = [sum(1 for t in tables if t.level == level) for level in range(g.arch.levels)]
        out = [
            f"Live: {', '.join(s.names[pid] for pid in sorted(s.names))}. Upper tables are never shared: "
            + ", ".join(f"{n} {name}" for n, name in zip(per_level[:-1], g.arch.level_names)) + "."
        ]
        for t in tables:
            if t.level == g.arch.levels - 1:
                sharers = ", ".join(s.names[pid] for pid in t.pids)
                out.append(f"pte table in frame {t.frame:#x} maps {g.hex(t.base)}-{g.hex(t.base + g.span - 1)}: use count {t.use_count} ({sharers}).")
        return "\n" + "\n".join(out)

    def mistakes(s, answer):
        known = {}
        if asks_count:
            mappers = sum(1 for n in s.live if s.ns[n].mm.find_vma(addr))
            known[mappers] = f"not every process that maps {g.hex(addr)} shares one table: a write or a partial munmap gives a process its own."
            if answer > 1:
                known[1] = "the table is shared: more than one upper entry points at it."
        else:
            known[sum(len(list_tables(s.ns[n])) for n in s.live)] = "that counts a shared table once for each process that reaches it, as VmPTE does; the machine holds it once."
            known[sum(1 for t in list_tables(s.m) if t.level == g.arch.levels - 1)] = "count every level: each live process has its own pgd and pmd too."
        known.pop(answer, None)
        return known

    return _spec(prompt, scenario, question, explain, mistakes, "follow each table's use count through every fork, write, munmap and exit.")


def _final_state(lines: list[str], g: Geometry) -> list[str] | None:
    """What the inverse question shows of the machine the lines leave (None if they cannot
    run): every process and its parent, and every pte table with its use count and sharers."""
    try:
        ns = _run(lines)
    except (NameError, ProcessExited, SegmentationFault, ValueError):
        return None
    names = _names(lines)
    by_pid = {ns[n].pid: n for n in names}
    out = ["processes: " + "; ".join(
        f"{n}" + (f" (child of {by_pid[ns[n].ppid]}" if ns[n].ppid in by_pid else " (spawned") + (", exited)" if ns[n].exited else ")")
        for n in names)]
    for t in sorted(list_tables(ns["m"]), key=lambda t: (t.base, [by_pid[pid] for pid in t.pids])):
        if t.level == g.arch.levels - 1:
            out.append(f"pte table for {g.hex(t.base)}-{g.hex(t.base + g.span - 1)}: use count {t.use_count} ({', '.join(by_pid[pid] for pid in t.pids)})")
    out.append(f"page-table pages held: {table_pages(ns['m'])}")
    return out


def _perturb(rng, calls: list[str], names: list[str]) -> list[str]:
    """The calls with one plausible slip: two neighbours swapped, one call dropped, or one
    call made by another process."""
    calls = list(calls)
    i = rng.randrange(len(calls))
    how = rng.choice(["swap", "drop", "who"])
    if how == "swap" and len(calls) > 1:
        j = min(i, len(calls) - 2)
        calls[j], calls[j + 1] = calls[j + 1], calls[j]
    elif how == "drop":
        del calls[i]
    else:
        caller = re.match(r"^(?:\w+ = )?(\w+)\.", calls[i])
        other = rng.choice([n for n in names if n != caller[1]])
        calls[i] = calls[i][: caller.start(1)] + other + calls[i][caller.end(1):]
    return calls


_CALLS = {1: (3, 3), 2: (4, 4), 3: (6, 5)}  # level: (calls, most processes alive)


def _calls(rng, g: Geometry, level: int) -> SimpleNamespace:
    setup, start, end = _shared_start(rng, g)
    count, most = _CALLS[level]
    calls = _steps(rng, g, start, end, count, most, ["fork", "write", "write", "munmap", "exit"])
    right = _final_state(setup + calls, g)
    # Wrong options: slips of the right sequence whose final state differs from the right one's
    # and from each other's, so that exactly one option leaves the state shown.
    wrong, seen = {}, {tuple(right)}
    names = _names(setup + calls)
    for _ in range(80):
        if len(wrong) == 3:
            break
        slip = _perturb(rng, calls, names)
        state = _final_state(setup + slip, g)
        if state is not None and tuple(state) not in seen:
            seen.add(tuple(state))
            extra, missing = [line for line in state if line not in right], [line for line in right if line not in state]
            wrong["; ".join(slip)] = (f"those calls leave {extra[0]!r}, which the state shown does not have." if extra
                                      else f"those calls do not leave {missing[0]!r}, which the state shown has.")

    def prompt(s):
        return "\n".join(setup + ["Then some calls, after which the machine is:"] + ["  " + line for line in right]
                         + ["Q: which calls, in this order, leave the machine so?"])

    def question(s):
        return "; ".join(calls)

    def explain(s, answer):
        out = []
        for i, call in enumerate(calls, 1):
            out += [f"{i}. {call}, after which:"] + ["   " + line for line in _final_state(setup + calls[:i], g)]
        return "\n" + "\n".join(out)

    def mistakes(s, answer):
        return dict(wrong)

    return _spec(prompt, scenario=SimpleNamespace, question=question, explain=explain, mistakes=mistakes,
                 hint="follow each call: who forks whom, and which call unshares or frees a table.", choices=4)


# -- cow -------------------------------------------------------------------------------------

# Fault kinds a student confuses with each other; a wrong list that makes one such slip is
# recognised (and multiple choice offers such lists).
_COW_SLIPS = {("wp_copy", "wp_reuse"), ("wp_reuse", "wp_copy"), ("wp_copy", "none"), ("none", "wp_copy"), ("wp_reuse", "none"),
              ("none", "wp_reuse"), ("zero", "anon"), ("anon", "zero"), ("shmem", "anon"), ("anon", "shmem")}
_COW = {1: ("copy", 3, 3, False), 2: (None, 3, 5, False), 3: ("shared", 5, 7, True)}  # level: (policy, fewest and most accesses, a grandchild d)


def _cow_slip(i: int, right: str, given: str) -> str | None:
    """Why `given` is not the kind of access `i` (one of the slips foreseen), or None."""
    r_unshare, r_kind = right.startswith("unshare+"), right.removeprefix("unshare+")
    g_unshare, g_kind = given.startswith("unshare+"), given.removeprefix("unshare+")
    if r_kind == g_kind and r_unshare:
        return f"access {i} finds its table still shared, so the fault unshares it first"
    if r_kind == g_kind and g_unshare:
        return f"access {i} finds a table of its own: nothing to unshare"
    if r_unshare == g_unshare and (r_kind, g_kind) in _COW_SLIPS:
        return f"access {i} is {r_kind}, not {g_kind}: {FAULT_KINDS[r_kind]}"
    return None


def _cow(rng, g: Geometry, level: int) -> SimpleNamespace:
    policy, low, high, grandchild = _COW[level]
    policy = policy or rng.choice(["copy", "shared"])
    lines = [g.machine_line(policy), "p = m.spawn()"]
    regions = _regions(rng, g, 2, 6, 12)
    pages, written = [], []
    for i, (start, end) in enumerate(regions):
        shared = i == 1 and level > 1 and rng.random() < 0.4
        lines.append(f"p.mmap(addr={start:#x}, length={end - start:#x}" + (", shared=True)" if shared else ")"))
        for a in rng.sample(_pages(g, start, end), (end - start) // g.page // 2):
            write = rng.random() < 0.7
            lines.append(_touch(rng, "p", a, write))
            written += [a] if write and not shared else []
        pages += _pages(g, start, end)
    lines.append("c = p.fork()")
    who = "pc"
    if grandchild:
        lines.append("d = c.fork()")
        who = "pcd"
    # A few pages, some of them written before the fork, so that the accesses meet again: a
    # page copied for one process is then reused by the other.
    pool = rng.sample(written, min(2, len(written))) + rng.sample(pages, 2)
    accesses = [_touch(rng, rng.choice(who), rng.choice(pool), rng.random() < 0.6) for _ in range(rng.randint(low, high))]
    kinds = ["none", "zero", "anon", "shmem", "wp_copy", "wp_reuse"]

    def scenario():
        return SimpleNamespace(ns=_run(lines), observed=[])

    def prompt(s):
        unshare = ["Under policy shared, write unshare+KIND when the access first unshares its table (unshare+wp_copy)."] if policy == "shared" else []
        return "\n".join(
            lines
            + ["Then, in this order:"]
            + [f"  {i}. {a}" for i, a in enumerate(accesses, 1)]
            + [f"Q: which fault does each access take? A list, one kind per access: {', '.join(kinds)}."]
            + unshare
        )

    def question(s):
        m = s.ns["m"]
        s.observed = [observe(m, lambda a=a: _run([a], s.ns)) for a in accesses]
        return tuple(o.kind for o in s.observed)

    def explain(s, answer):
        out = []
        for i, (a, o) in enumerate(zip(accesses, s.observed), 1):
            why = "; then ".join(FAULT_KINDS[kind] for kind in o.kind.split("+"))
            out.append(f"{i}. {a}: {o.kind}: {why}. Kernel: {o.steps()}.")
        return "\n" + "\n".join(out)

    def mistakes(s, answer):
        """The lists that make one foreseen slip, at one access."""
        known = {}
        for i, right in enumerate(answer):
            base = right.removeprefix("unshare+")
            prefix = right[: len(right) - len(base)]
            slips = [prefix + g for r, g in sorted(_COW_SLIPS) if r == base]
            if policy == "shared":
                slips.append(base if prefix else "unshare+" + base)
            for slip in slips:
                known[answer[:i] + (slip,) + answer[i + 1:]] = _cow_slip(i + 1, right, slip) + "."
        return known

    def diagnose(s, answer, given):
        if not isinstance(given, tuple) or len(given) != len(answer):
            return None
        notes = [_cow_slip(i, r, g) or f"access {i} is not right" for i, (g, r) in enumerate(zip(given, answer), 1) if g != r]
        return "; ".join(notes) + "."

    return _spec(prompt, scenario, question, explain, mistakes, "after fork, who maps each page, and is its entry writable?", diagnose=diagnose)


# -- the quiz ----------------------------------------------------------------------------------

TOPICS = {"translate": _translate, "fork-copy": _fork_copy, "shared": _shared, "cow": _cow, "calls": _calls}
# The topics whose scenarios fit every geometry; the others need toy's small tables (a region
# of two or three whole tables, half written).
ANY_ARCH = ("translate", "fork-copy", "cow")


def _text(value, show) -> str:
    """An answer as a multiple-choice option shows it."""
    if isinstance(value, tuple):
        return ", ".join(value)
    return show(value) if isinstance(value, int) else value


def _exercise(spec, rng, choices: int) -> Exercise | None:
    """The problem as an Exercise: open, or multiple choice among the right answer and up to
    `choices` - 1 recognised mistakes (None if it has none to offer)."""
    choices = choices or spec.choices
    if not choices:
        def diagnose(s, answer, given):
            why = spec.mistakes(s, answer).get(given)
            return why if why is not None or spec.diagnose is None else spec.diagnose(s, answer, given)

        return Exercise(spec.prompt, spec.scenario, spec.question, explain=spec.explain, diagnose=diagnose, hint=spec.hint, show=spec.show)
    state = spec.scenario()
    answer = normal(spec.question(state))
    wrong = spec.mistakes(state, answer)
    picked = rng.sample(sorted(wrong, key=repr), min(choices - 1, len(wrong)))
    if not picked:
        return None
    options = [_text(v, spec.show) for v in picked + [answer]]
    rng.shuffle(options)
    why = {normal(_text(v, spec.show)): wrong[v] for v in picked}

    def question(s):
        s.raw = spec.question(s)
        return _text(normal(s.raw), spec.show)

    return Exercise(spec.prompt, spec.scenario, question, explain=lambda s, a: spec.explain(s, s.raw), diagnose=lambda s, a, g: why.get(g),
                    choices=tuple(options), hint=spec.hint, show=spec.show)


def _check(name: str, value, allowed) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, not {value!r}")


def quiz(topic: str, seed: int | str = 0, n: int = 5, *, arch: str = "toy", level: int = 1, choices: int = 0) -> list[Exercise]:
    """`n` problems about `topic` for `seed`, a number or a student's id (any string); the same
    arguments always give the same problems. `arch`: the geometry (topics in ANY_ARCH; the
    others are toy only); `level`: 1 to 3, harder; `choices`: 0 for open answers, else how many
    options a multiple-choice problem offers at most (the calls topic offers 4 when it is 0)."""
    _check("topic", topic, sorted(TOPICS))
    if isinstance(seed, bool) or not isinstance(seed, (int, str)) or not str(seed).strip():
        raise ValueError(f"seed must be an int or a non-empty string (a student id), not {seed!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, not {n!r}")
    _check("arch", arch, sorted(ARCHES) if topic in ANY_ARCH else ["toy"])
    _check("level", level, LEVELS)
    _check("choices", choices, [0] + list(range(2, len(_LETTERS) + 1)))
    rng = student_rng(f"quiz {topic} arch {arch} level {level} choices {choices}", str(seed))
    g = Geometry(arch)
    problems = []
    while len(problems) < n:  # a problem with no mistake to offer as a choice is drawn again
        problem = _exercise(TOPICS[topic](rng, g, level), rng, choices)
        if problem is not None:
            problems.append(problem)
    return problems


# -- sheets ------------------------------------------------------------------------------------


def _key(problem: Exercise) -> str:
    """The answer and why; for multiple choice, why each wrong option is wrong too."""
    if problem.choices is None:
        return problem.explain()
    letters = _LETTERS[: len(problem.choices)]
    right = next(letter for letter in letters if problem.check(letter))
    return "\n".join([f"({right}) {problem.explain()}"] + [f"({letter}) {problem.check(letter)}" for letter in letters if letter != right])


def _problems(topics: list[str], seed, args) -> list[tuple[str, Exercise]]:
    return [(t, p) for t in topics for p in quiz(t, seed, args.num, arch=args.arch, level=args.level, choices=args.choices)]


def _command(topics: list[str], seed, args) -> str:
    return f"python -m ptsim.quiz -t {','.join(topics)} -s {shlex.quote(str(seed))} -n {args.num} --arch {args.arch} --level {args.level} --choices {args.choices}"


def _sheet(topics: list[str], student: str, args, key: bool) -> str:
    """One student's problem sheet (or its key), in Markdown."""
    title = f"# ptsim quiz{' key' if key else ''}: {student}"
    made = _command(topics, student, args) + (" -c" if key else "")
    out = [title, "", f"Topics {', '.join(topics)}; geometry {args.arch}; level {args.level}. Made by `{made}`.", ""]
    for i, (topic, problem) in enumerate(_problems(topics, student, args), 1):
        out += [f"## Problem {i} ({topic})", "", "```text", str(problem), "```", ""]
        if key:
            out += ["```text", _key(problem), "```", ""]
        else:
            out += ["Answer: ______________________", ""]
    return "\n".join(out)


def _html(markdown: str, title: str) -> str | None:
    """The Markdown as a page, with nbconvert's Markdown filter (None if nbconvert is missing)."""
    try:
        from nbconvert.filters.markdown_mistune import markdown2html_mistune
    except ImportError:
        return None
    return f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(title)}</title></head><body>\n{markdown2html_mistune(markdown)}\n</body></html>\n'


def _students(values: list[str]) -> list[str]:
    """Student ids: each value is a file of ids (one a line; blank lines and # comments left
    out) if such a file exists, else an id."""
    ids = []
    for value in values:
        path = Path(value)
        if path.is_file():
            ids += [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]
        else:
            ids.append(value.strip())
    return ids


def _filename(student: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", student).strip("._") or "_"


def _write_sheets(directory: Path, topics: list[str], students: list[str], args) -> list[Path]:
    """For each student, <id>-sheet.md and <id>-key.md in `directory` (and .html of both when
    nbconvert is installed); returns the files written."""
    files = {}
    for student in students:
        name = _filename(student)
        if name in files:
            raise ValueError(f"--students: {student!r} and {files[name]!r} make the same file name {name!r}")
        files[name] = student
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, student in files.items():
        for kind, key in (("sheet", False), ("key", True)):
            text = _sheet(topics, student, args, key)
            path = directory / f"{name}-{kind}.md"
            path.write_text(text)
            written.append(path)
            html = _html(text, f"ptsim quiz {kind}: {student}")
            if html is not None:
                written.append(path.with_suffix(".html"))
                written[-1].write_text(html)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptsim.quiz", description="Seeded page-table problems, with answers computed by ptsim.")
    parser.add_argument("-t", "--topic", default="translate", help=f"one of {', '.join(TOPICS)}, or several joined by commas")
    parser.add_argument("-s", "--seed", default="0", help="the random seed: a number or any string, such as a student's id")
    parser.add_argument("-n", "--num", type=int, default=5, help="how many problems (of each topic)")
    parser.add_argument("-c", "--compute", action="store_true", help="print the answers too")
    parser.add_argument("--arch", default="toy", choices=sorted(ARCHES), help=f"the geometry (topics {', '.join(ANY_ARCH)}; the others are toy only)")
    parser.add_argument("--level", type=int, default=1, choices=LEVELS, help="difficulty: more regions, processes, calls and accesses")
    parser.add_argument("--choices", type=int, default=0, help="multiple choice with up to this many options (2-10); 0: open answers")
    parser.add_argument("--sheet", metavar="DIR", help="write a problem sheet and a key per student (--students) into DIR")
    parser.add_argument("--students", nargs="+", metavar="ID_OR_FILE", help="student ids, or files of them (one a line)")
    args = parser.parse_args(argv)
    topics = [t.strip() for t in args.topic.split(",")]
    for topic in topics:
        if topic not in TOPICS:
            parser.error(f"argument -t/--topic: {topic!r} is not one of {', '.join(TOPICS)}")
    if args.arch != "toy" and any(t not in ANY_ARCH for t in topics):
        parser.error(f"argument --arch: topics {', '.join(t for t in topics if t not in ANY_ARCH)} are drawn on the toy geometry only")
    if args.num < 1:
        parser.error(f"argument -n/--num: must be at least 1, not {args.num}")
    if not args.seed.strip():
        parser.error("argument -s/--seed: must not be empty")
    if args.choices != 0 and not 2 <= args.choices <= len(_LETTERS):
        parser.error(f"argument --choices: must be 0 or 2 to {len(_LETTERS)}, not {args.choices}")
    if (args.sheet is None) != (args.students is None):
        parser.error("arguments --sheet and --students: give both (a directory and the student ids) or neither")
    seed = args.seed.strip()
    for name in ("topic", "seed", "num", "compute", "arch", "level", "choices", "sheet", "students"):
        print(f"ARG {name} {getattr(args, name)}")
    if args.sheet is not None:
        students = _students(args.students)
        if not students:
            parser.error(f"argument --students: no student ids in {' '.join(args.students)}")
        try:
            written = _write_sheets(Path(args.sheet), topics, students, args)
        except ValueError as e:
            parser.error(str(e))
        html = any(p.suffix == ".html" for p in written)
        print(f"\nWrote {len(written)} files to {args.sheet}: a sheet and a key for each of {len(students)} students"
              + (", in Markdown and HTML." if html else ", in Markdown (HTML needs nbconvert)."))
        return 0
    for i, (_, problem) in enumerate(_problems(topics, seed, args), 1):
        print(f"\nProblem {i}")
        print(textwrap.indent(str(problem), "  "))
        if args.compute:
            print(textwrap.indent(_key(problem), "  "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
