"""Seeded self-checking problems, as OSTEP's homework simulators make them.

    python -m ptsim.quiz --topic translate -s 7 -n 5       # five problems
    python -m ptsim.quiz --topic translate -s 7 -n 5 -c    # the same five, with answers

Every problem runs on the `toy` geometry (3 levels of 8 entries, 64-byte pages), whose whole
tree fits on a page. Its scenario is ptsim code, shown in the question and run as shown; its
answer is what the machine then does: the MMU's walk (translate), the counters of one fork
(fork-copy), the use counts and page-table pages held (shared), the fault each access takes
(cow). The same topic and seed always give the same problems.
"""

from __future__ import annotations

import argparse
import random
import textwrap
from types import SimpleNamespace

import ptsim

from .exercises import FAULT_KINDS, Exercise, observe
from .hardware import ARCHES, PageFault
from .hardware.arch import _PAGE_PRESENT, _PAGE_RW, _PAGE_USER
from .kernel.core import MAPPED
from .kernel.page import ZERO_PFN
from .peek import list_tables, table_pages, use_count

ARCH = ARCHES["toy"]
PAGE = ARCH.page_size
SPAN = ARCH.pte_span  # what one last-level table maps: 8 pages
RAM = 1 << 14  # 256 frames: frame numbers stay two hex digits
SLOTS = ARCH.task_size // SPAN  # table-aligned places a region may start


def _machine_line(policy: str) -> str:
    return f'm = ptsim.Machine(arch="toy", policy="{policy}", ram={RAM:#x})'


def _run(lines: list[str], ns: dict | None = None) -> dict:
    """Run scenario lines as they are shown; the namespace holds what they made."""
    ns = {"ptsim": ptsim} if ns is None else ns
    exec("\n".join(lines), ns)
    return ns


def _regions(rng: random.Random, count: int, min_pages: int, max_pages: int) -> list[tuple[int, int]]:
    """`count` disjoint [start, end) ranges, each starting on a table boundary or a few pages
    after it, none reaching the next one's table."""
    slots = sorted(rng.sample(range(1, SLOTS - 2), count))
    regions = []
    for slot, after in zip(slots, slots[1:] + [SLOTS]):
        skew = rng.randrange(0, 3)
        room = (after - slot) * (SPAN // PAGE) - skew
        pages = rng.randint(min(min_pages, room), min(max_pages, room))
        start = slot * SPAN + skew * PAGE
        regions.append((start, start + pages * PAGE))
    return regions


def _pages(start: int, end: int) -> list[int]:
    return list(range(start, end, PAGE))


def _touch(rng: random.Random, proc: str, addr: int, write: bool) -> str:
    return f'{proc}.write({addr:#x}, b"{rng.choice("abcdefgh")}")' if write else f"{proc}.read({addr:#x}, 1)"


# -- translate -------------------------------------------------------------------------------


def _geometry() -> list[str]:
    fields = [f"{ARCH.shift(level) + ARCH.index_bits - 1}-{ARCH.shift(level)} index the {name}" for level, name in enumerate(ARCH.level_names)]
    return [
        f"Geometry toy: {ARCH.levels} levels ({', '.join(ARCH.level_names)}) of {ARCH.entries} entries, {PAGE}-byte pages.",
        f"Virtual address bits {', '.join(fields)}, {ARCH.page_shift - 1}-0 are the offset.",
        "An entry: PFN from bit 12 up; bit 0 P (present), 1 RW (writable), 2 US (user), 5 A, 6 D.",
        f"A physical address is PFN * {PAGE} + offset.",
    ]


def _bits(entry: int) -> str:
    return " ".join(f"{name}={int(bool(entry & bit))}" for name, bit in (("P", _PAGE_PRESENT), ("RW", _PAGE_RW), ("US", _PAGE_USER)))


def _walk_lines(k, pgd: int, va: int) -> list[str]:
    """The walk a student does by hand: each level's index and entry, until one is not present."""
    indexes = [ARCH.index(level, va) for level in range(ARCH.levels)]
    lines = [f"{va:#06x}: " + ", ".join(f"{n} index {i}" for n, i in zip(ARCH.level_names, indexes)) + f", offset {va % PAGE:#x}"]
    table = pgd
    for name, index in zip(ARCH.level_names, indexes):
        entry = k.entry(table, index)
        lines.append(f"{name}[{index}] in frame {table:#x} = {entry:#07x} ({_bits(entry)})")
        if not entry & _PAGE_PRESENT:
            break
        table = k.entry_pfn(entry)
    return lines


def _translate(rng: random.Random) -> Exercise:
    lines = [_machine_line("copy"), "p = m.spawn()"]
    regions = _regions(rng, rng.randint(1, 3), 2, 12)
    touched = []
    for start, end in regions:
        prot = rng.choice(["rw", "rw", "r"])
        lines.append(f'p.mmap(addr={start:#x}, length={end - start:#x}, prot="{prot}")')
        for addr in rng.sample(_pages(start, end), rng.randint(1, (end - start) // PAGE)):
            write = prot == "rw" and rng.random() < 0.7
            lines.append(_touch(rng, "p", addr, write))
            touched.append(addr)
    if rng.random() < 0.6:
        page = rng.choice(touched)
    else:
        page = rng.randrange(ARCH.mmap_min_addr // PAGE, ARCH.task_size // PAGE) * PAGE
    va = page + rng.randrange(PAGE)
    write = rng.random() < 0.4

    def scenario():
        ns = _run(lines)
        k, p = ns["m"].kernel, ns["p"]
        dump = [f"frame {t.frame:#04x} ({t.name}): " + " ".join(f"{int(e):#07x}" for e in k.phys.tables[t.frame]) for t in list_tables(p)]
        return SimpleNamespace(lines=lines, m=ns["m"], p=p, va=va, write=write, dump=dump, walk=_walk_lines(k, p.mm.pgd, va), fault=None)

    def prompt(s):
        return "\n".join(
            s.lines
            + _geometry()
            + [f"Page tables of p (CR3 = frame {s.p.mm.pgd:#x}), 8 entries each, index 0 first:"]
            + ["  " + row for row in s.dump]
            + [f"Q: p {'writes' if write else 'reads'} the byte at {va:#06x}. Which physical address does the MMU reach? (or: fault)"]
        )

    def question(s):
        """The hardware's own walk (which sets A and D, after the prompt has been taken)."""
        try:
            pfn, _ = s.m.kernel.mmu.walk(s.p.mm.pgd, s.va, s.write)
        except PageFault as fault:
            s.fault = fault
            return "fault"
        return pfn * PAGE + s.va % PAGE

    def explain(s, answer):
        if s.fault is None:
            end = f"so the {'write' if s.write else 'read'} reaches {answer // PAGE:#x} * {PAGE} + {s.va % PAGE:#x} = {answer:#x}."
        elif s.fault.protection:
            end = "so the write faults: the page is present but RW is 0 on the way (a protection fault)."
        else:
            end = "so the access faults: the walk stops at an entry whose P is 0 (not present)."
        return "\n" + "\n".join(s.walk + [end])

    def diagnose(s, answer, given):
        if s.fault is not None:
            if not isinstance(given, int):
                return None
            if s.fault.protection:
                return "the page is mapped, but RW is 0 on the way: a write faults (protection), and the kernel then decides."
            return "the walk reaches an entry whose P bit is 0: the access faults there."
        pfn, offset = answer // PAGE, s.va % PAGE
        known = {
            pfn: f"that is the frame number; the address is PFN * {PAGE} + offset.",
            (pfn << 12) | offset: f"a toy page is {PAGE} bytes, not 4096: PFN * {PAGE} + offset.",
            pfn * PAGE: f"you left out the offset, the low {ARCH.page_shift} bits of the address ({offset:#x}).",
            "fault": "every entry on the walk has P set" + (" and RW set" if s.write else "") + ": no fault.",
        }
        return known.get(given)

    return Exercise(prompt, scenario, question, explain=explain, diagnose=diagnose, show=hex, hint="walk one level at a time, from CR3.")


# -- fork-copy -------------------------------------------------------------------------------

# Regions a fork-copy scenario maps: (prot, MAP_SHARED, whether p writes into it).
_FORK_REGIONS = [("rw", False, True), ("rw", False, False), ("r", False, False), ("rw", True, True)]


def _fork_copy(rng: random.Random) -> Exercise:
    lines = [_machine_line("copy"), "p = m.spawn()"]
    kinds = [_FORK_REGIONS[0]] + rng.sample(_FORK_REGIONS, rng.randint(1, 2))
    regions = _regions(rng, len(kinds), 3, 12)
    for (start, end), (prot, shared, writes) in zip(regions, kinds):
        lines.append(f'p.mmap(addr={start:#x}, length={end - start:#x}, prot="{prot}"' + (", shared=True)" if shared else ")"))
        for addr in rng.sample(_pages(start, end), rng.randint(1, (end - start) // PAGE)):
            lines.append(_touch(rng, "p", addr, writes and rng.random() < 0.7))
    if rng.random() < 0.4:  # an earlier fork leaves entries read-only that the last fork finds so
        lines.append("c0 = p.fork()")
        start, end = regions[0]
        lines += [_touch(rng, "p", a, True) for a in rng.sample(_pages(start, end), rng.randint(1, 3))]
    counter = rng.choice(["ptes_copied", "ptes_wrprotected"])

    def scenario():
        ns = _run(lines)
        k, mm = ns["m"].kernel, ns["p"].mm
        vmas = []
        for vma in mm.vmas:
            entries = [k.follow_pte(mm, a) for a in _pages(vma.start, vma.end)]
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
            where = f"{v.vma.start:#06x}-{v.vma.end - 1:#06x} {'shared' if v.vma.shared else 'private'} {v.vma.prot or 'none'}"
            has = f"{v.mapped} entries map pages ({v.zero} of them the zero page), {v.writable} writable"
            if v.copied:
                out.append(f"{where}: {has}; it has anonymous pages, so all {v.mapped} are copied, and the writable ones ({v.writable}) write-protected.")
            elif v.vma.shared:
                out.append(f"{where}: {has}; MAP_SHARED memory is not copied: c faults its pages in from the shmem object.")
            else:
                out.append(f"{where}: {has}; no anonymous page yet, so it is not copied: c faults them in again.")
        return "\n" + "\n".join(out)

    def diagnose(s, answer, given):
        known = {}
        if counter == "ptes_copied":
            known[sum(v.mapped - v.zero for v in s.vmas if v.copied)] = "entries that map the zero page are copied too, in a VMA that is copied."
            known[sum(v.mapped for v in s.vmas)] = "copy_page_range skips VMAs with no anonymous page (only the zero page, or MAP_SHARED): the child faults those in."
        else:
            known[sum(v.writable for v in s.vmas)] = "MAP_SHARED entries keep RW, and VMAs that are not copied are not touched."
            known[sum(v.mapped for v in s.vmas if v.copied)] = "only writable entries are write-protected; read-only ones (the zero page, pages an earlier fork left read-only) stay as they are."
        known.pop(answer, None)
        return known.get(given)

    return Exercise(prompt, scenario, question, explain=explain, diagnose=diagnose, hint="go VMA by VMA: which does copy_page_range copy?")


# -- shared ----------------------------------------------------------------------------------


def _shared(rng: random.Random) -> Exercise:
    lines = [_machine_line("shared"), "p = m.spawn()"]
    start = rng.randrange(1, SLOTS - 3) * SPAN
    end = start + rng.randint(12, 24) * PAGE  # two or three tables
    lines.append(f"p.mmap(addr={start:#x}, length={end - start:#x})")
    lines += [_touch(rng, "p", a, True) for a in sorted(rng.sample(_pages(start, end), (end - start) // PAGE // 2))]
    mapped = {"p": set(_pages(start, end))}  # what each live process may touch
    for step in range(rng.randint(3, 5)):
        live = sorted(mapped)
        action = "fork" if step == 0 else rng.choice(["fork", "fork", "write", "write", "write", "munmap", "exit"])
        if action == "fork" and len(mapped) < 4:
            parent, child = rng.choice(live), f"c{step + 1}"
            lines.append(f"{child} = {parent}.fork()")
            mapped[child] = set(mapped[parent])
        elif action == "exit" and len(live) > 2:
            who = rng.choice([n for n in live if n != "p"])
            lines.append(f"{who}.exit()")
            del mapped[who]
        elif action == "munmap":
            who = rng.choice(live)
            table = rng.randrange(start // SPAN, (end - 1) // SPAN + 1) * SPAN
            first = rng.choice([table, table + rng.randrange(1, 6) * PAGE])  # a whole table, or part of one
            last = min(rng.choice([table + SPAN, first + rng.randint(1, 3) * PAGE]), table + SPAN)
            lines.append(f"{who}.munmap({first:#x}, {last - first:#x})")
            mapped[who] -= set(range(first, last, PAGE))
        elif mapped[who := rng.choice(live)]:  # a write; also what a fork or exit that cannot be becomes
            lines.append(_touch(rng, who, rng.choice(sorted(mapped[who])), True))
    names = sorted(mapped)
    who = rng.choice(names)
    addr = rng.choice(_pages(start, end))
    asks_count = rng.random() < 0.6

    def scenario():
        ns = _run(lines)
        return SimpleNamespace(ns=ns, m=ns["m"], names={ns[n].pid: n for n in names})

    def prompt(s):
        if asks_count:
            q = f"Q: what is the use count of the page-table page that maps {addr:#06x} for {who}? (0 if {who} has none there)"
        else:
            q = "Q: how many page-table pages does the machine hold now, at every level?"
        return "\n".join(lines + [q])

    def question(s):
        return use_count(s.ns[who], addr) if asks_count else table_pages(s.m)

    def explain(s, answer):
        tables = list_tables(s.m)
        per_level = [sum(1 for t in tables if t.level == level) for level in range(ARCH.levels)]
        out = [
            f"Live: {', '.join(s.names[pid] for pid in sorted(s.names))}. Upper tables are never shared: "
            + ", ".join(f"{n} {name}" for n, name in zip(per_level[:-1], ARCH.level_names)) + "."
        ]
        for t in tables:
            if t.level == ARCH.levels - 1:
                sharers = ", ".join(s.names[pid] for pid in t.pids)
                out.append(f"pte table in frame {t.frame:#x} maps {t.base:#06x}-{t.base + SPAN - 1:#06x}: use count {t.use_count} ({sharers}).")
        return "\n" + "\n".join(out)

    def diagnose(s, answer, given):
        known = {}
        if asks_count:
            mappers = sum(1 for n in names if s.ns[n].mm.find_vma(addr))
            known[mappers] = f"not every process that maps {addr:#06x} shares one table: a write or a partial munmap gives a process its own."
            if answer > 1:
                known[1] = "the table is shared: more than one upper entry points at it."
        else:
            known[sum(len(list_tables(s.ns[n])) for n in names)] = "that counts a shared table once for each process that reaches it, as VmPTE does; the machine holds it once."
            known[sum(1 for t in list_tables(s.m) if t.level == ARCH.levels - 1)] = "count every level: each live process has its own pgd and pmd too."
        known.pop(answer, None)
        return known.get(given)

    return Exercise(prompt, scenario, question, explain=explain, diagnose=diagnose, hint="follow each table's use count through every fork, write, munmap and exit.")


# -- cow -------------------------------------------------------------------------------------


def _cow(rng: random.Random) -> Exercise:
    policy = rng.choice(["copy", "shared"])
    lines = [_machine_line(policy), "p = m.spawn()"]
    regions = _regions(rng, 2, 6, 12)
    pages, written = [], []
    for i, (start, end) in enumerate(regions):
        shared = i == 1 and rng.random() < 0.4
        lines.append(f"p.mmap(addr={start:#x}, length={end - start:#x}" + (", shared=True)" if shared else ")"))
        for a in rng.sample(_pages(start, end), (end - start) // PAGE // 2):
            write = rng.random() < 0.7
            lines.append(_touch(rng, "p", a, write))
            written += [a] if write and not shared else []
        pages += _pages(start, end)
    lines.append("c = p.fork()")
    # A few pages, some of them written before the fork, so that the accesses meet again: a
    # page copied for one process is then reused by the other.
    pool = rng.sample(written, min(2, len(written))) + rng.sample(pages, 2)
    accesses = [_touch(rng, rng.choice("pc"), rng.choice(pool), rng.random() < 0.6) for _ in range(rng.randint(3, 5))]
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

    def diagnose(s, answer, given):
        if not isinstance(given, tuple) or len(given) != len(answer):
            return None
        notes = []
        for i, (g, r) in enumerate(zip(given, answer), 1):
            if g == r:
                continue
            if r.startswith("unshare+") and g == r.removeprefix("unshare+"):
                notes.append(f"access {i} finds its table still shared, so the fault unshares it first")
            elif g.startswith("unshare+") and g.removeprefix("unshare+") == r:
                notes.append(f"access {i} finds a table of its own: nothing to unshare")
            else:
                notes.append(f"access {i} is not right")
        return "; ".join(notes) + "."

    return Exercise(prompt, scenario, question, explain=explain, diagnose=diagnose, hint="after fork, who maps each page, and is its entry writable?")


# -- the quiz ----------------------------------------------------------------------------------

TOPICS = {"translate": _translate, "fork-copy": _fork_copy, "shared": _shared, "cow": _cow}


def quiz(topic: str, seed: int = 0, n: int = 5) -> list[Exercise]:
    """`n` problems about `topic`; the same topic and seed always give the same problems."""
    if topic not in TOPICS:
        raise ValueError(f"topic must be one of {sorted(TOPICS)}, not {topic!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, not {seed!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, not {n!r}")
    rng = random.Random(f"{topic}:{seed}")
    return [TOPICS[topic](rng) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptsim.quiz", description="Seeded page-table problems, with answers computed by ptsim.")
    parser.add_argument("-t", "--topic", choices=sorted(TOPICS), default="translate")
    parser.add_argument("-s", "--seed", type=int, default=0, help="the random seed")
    parser.add_argument("-n", "--num", type=int, default=5, help="how many problems")
    parser.add_argument("-c", "--compute", action="store_true", help="print the answers too")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"argument -n/--num: must be at least 1, not {args.num}")
    for name in ("topic", "seed", "num", "compute"):
        print(f"ARG {name} {getattr(args, name)}")
    for i, problem in enumerate(quiz(args.topic, args.seed, args.num), 1):
        print(f"\nProblem {i}")
        print(textwrap.indent(str(problem), "  "))
        if args.compute:
            print(textwrap.indent(problem.explain(), "  "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
