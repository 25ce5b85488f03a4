"""Broken kernels: sharing policies with one bug each, to find.

CATALOGUE lists them: each is a small subclass of SharedPolicy that breaks one rule of
notebooks/rules-of-sharing.md in one of Phillips' functions, and its docstring says which.
`ptsim.lab.check` catches every one (tests/test_lab.py), with the rule given here.

The find-the-bug exercise hands each student one of them, chosen from the student's id
(`ptsim.exercises.student_rng("find-the-bug", student)`):

    kernel = ptsim.broken.assigned()             # a policy object named like Kernel42
    m = ptsim.Machine(policy=kernel); ...        # experiments of the student's own
    ptsim.broken.FIND_THE_BUG.check("zap_pte_table", 10)

The kernel handed out is a class made for the occasion: its name is a number drawn for the
student, and it overrides all six methods (the broken one and five that only call
SharedPolicy's), so neither its name nor its list of methods tells the bug. Its source can
still be read, here, by anyone who looks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exercises import Verdict, normal, student_rng
from .hardware.arch import _PAGE_TABLE
from .kernel.fork import CopyPolicy, SharedPolicy
from .kernel.page import PG_PGTABLE

FUNCTIONS = ("copy_pte_tables", "zap_pte_table", "prepare_pte_write", "prepare_pte_fill", "unshare", "wrprotect_for_sharing")


class NoUnshareFlush(SharedPolicy):
    """unshare: installs the copy without flushing the process's TLB (rule 17)."""

    def unshare(self, k, mm, slot, addr, func):
        k.flush_tlb_range = lambda *args: None  # shadows the method for this one call
        try:
            return SharedPolicy.unshare(self, k, mm, slot, addr, func)
        finally:
            del k.flush_tlb_range


class NoWrprotect(SharedPolicy):
    """wrprotect_for_sharing: leaves the shared table's private entries writable (rule 2)."""

    def wrprotect_for_sharing(self, k, mm, vma, pmd, indexes, shared, bases):
        pass


class ZapForEveryone(SharedPolicy):
    """zap_pte_table: when a sharer lets go of a shared table whole, it zaps the table's
    entries, freeing pages the other sharers still map, before dropping its use count
    (rule 9: only the last sharer frees; rule 10 too)."""

    def zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func):
        CopyPolicy.zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func)
        SharedPolicy.zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func)


class DoublePut(SharedPolicy):
    """zap_pte_table: drops a shared table's use count twice when a sharer lets go of it
    whole (rule 1: the count no longer equals the upper entries; rules 9 and 10 too)."""

    def zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func):
        shared = k.mem_map.refcount[table] > 1
        SharedPolicy.zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func)
        if shared and whole:
            k.mem_map.refcount[table] -= 1


class LostRss(SharedPolicy):
    """unshare: the copy does not take over the old table's count of resident pages
    (`table_rss`), so VmRSS drops (rule 4: the copy does all that fork would have done)."""

    def unshare(self, k, mm, slot, addr, func):
        new = SharedPolicy.unshare(self, k, mm, slot, addr, func)
        k.mem_map.table_rss[new] = 0
        return new


class NoPartialUnshare(SharedPolicy):
    """zap_pte_table: zaps part of a shared table in place, for every sharer, instead of
    unsharing it first (rule 11)."""

    def zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func):
        if whole:
            SharedPolicy.zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func)
        else:
            CopyPolicy.zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func)


class LastSharerCopies(SharedPolicy):
    """prepare_pte_write: moves the table into a new frame before a write even when the
    process is its only user (use count 1), and frees the old one: nothing is lost, but rule 6
    says the last sharer uses its table as it is, and the copy costs a table and a flush."""

    def prepare_pte_write(self, k, mm, slot, addr, func):
        table = k.slot_table(slot)
        if k.mem_map.refcount[table] > 1:
            return self.unshare(k, mm, slot, addr, func)
        mem_map, new = k.mem_map, k.mem_map.alloc_one(PG_PGTABLE)
        k.phys.tables[new] = k.phys.tables[table]
        mem_map.table_rss[new], mem_map.table_swapents[new] = mem_map.table_rss[table], mem_map.table_swapents[table]
        k.set_entry(*slot, k.arch.mk_entry(new, _PAGE_TABLE))
        mem_map.free(table)
        base = addr & ~(k.arch.pte_span - 1)
        k.flush_tlb_range(mm, base, base + k.arch.pte_span, func)
        return new


class WriteFills(SharedPolicy):
    """prepare_pte_write: a write fault on an empty entry fills the shared table, as a read
    fault may, instead of unsharing it (rule 13 for MAP_SHARED memory; for private memory the
    new page is writable by every sharer, rule 2)."""

    def prepare_pte_write(self, k, mm, slot, addr, func):
        table = k.slot_table(slot)
        if k.entry(table, k.arch.index(k.arch.levels - 1, addr)) == 0:
            return table
        return SharedPolicy.prepare_pte_write(self, k, mm, slot, addr, func)


class ReforkCountsTwice(SharedPolicy):
    """copy_pte_tables: a fork of a process whose table is already shared raises its use
    count by two (rule 1; rule 8 says a re-fork only raises the count)."""

    def copy_pte_tables(self, k, dst, src, vma, dst_pmd, src_pmd, indexes, pmd_base):
        tables = k.pfns_of(k.phys.tables[src_pmd, indexes])
        before = k.mem_map.refcount[tables].copy()
        SharedPolicy.copy_pte_tables(self, k, dst, src, vma, dst_pmd, src_pmd, indexes, pmd_base)
        again = tables[(before > 1) & (k.mem_map.refcount[tables] > before)]
        k.mem_map.refcount[np.unique(again)] += 1


class StaleFillTable(SharedPolicy):
    """prepare_pte_fill: unshares on a read fault (Hugh Dickins' way) but returns the old,
    shared table instead of the copy (rule 5: the fault must fill the table it now uses)."""

    def __init__(self):
        SharedPolicy.__init__(self, read_fault="unshare")

    def prepare_pte_fill(self, k, mm, vma, slot, addr, func):
        table = k.slot_table(slot)
        if k.mem_map.refcount[table] > 1:
            self.unshare(k, mm, slot, addr, func)
        return table


@dataclass(frozen=True)
class Bug:
    policy: type  # a SharedPolicy subclass
    function: str  # the method it breaks, one of FUNCTIONS
    rule: int  # the rule ptsim.lab.check reports
    also: tuple[int, ...] = ()  # other rules a student may fairly name


CATALOGUE = (
    Bug(NoUnshareFlush, "unshare", 17),
    Bug(NoWrprotect, "wrprotect_for_sharing", 2),
    Bug(ZapForEveryone, "zap_pte_table", 9, (10,)),
    Bug(DoublePut, "zap_pte_table", 1, (9, 10)),
    Bug(LostRss, "unshare", 4),
    Bug(NoPartialUnshare, "zap_pte_table", 11),
    Bug(LastSharerCopies, "prepare_pte_write", 6),
    Bug(WriteFills, "prepare_pte_write", 13, (2,)),
    Bug(ReforkCountsTwice, "copy_pte_tables", 1, (8,)),
    Bug(StaleFillTable, "prepare_pte_fill", 5),
)


def _disguised(bug: Bug, number: int) -> SharedPolicy:
    """An instance of `bug.policy` as a class named Kernel<number> overriding every method."""
    methods = {}
    for name in FUNCTIONS:
        own = vars(bug.policy).get(name)
        if own is None:
            def own(self, *args, _name=name):
                return getattr(SharedPolicy, _name)(self, *args)
        methods[name] = own
    methods["__doc__"] = "A fork policy that shares page tables: one of its methods is wrong. Which, and what rule does it break?"
    methods["__init__"] = vars(bug.policy).get("__init__", SharedPolicy.__init__)
    methods["withhold_rule"] = True  # ptsim.lab.check reports the failure, not the rule
    return type(f"Kernel{number}", (SharedPolicy,), methods)()


def _pick(student: str | None) -> tuple[Bug, int]:
    rng = student_rng("find-the-bug", student)
    return CATALOGUE[rng.randrange(len(CATALOGUE))], rng.randrange(10, 100)


def assigned(student: str | None = None) -> SharedPolicy:
    """The broken kernel of `student` (see ptsim.exercises.student_id): a policy object to
    pass to `ptsim.Machine(policy=...)` or `ptsim.lab.check`."""
    return _disguised(*_pick(student))


class FindTheBug:
    """The exercise: name the function of your assigned kernel that is wrong, and the rule it
    breaks. The answer is worked out again, from the student's id, at every check; as the
    book's exercises do, it records whether a check was right (`solved`), for an autograder."""

    def __init__(self):
        self.tries, self.solved, self.last = 0, False, None

    prompt = ("`ptsim.broken.assigned()` is a sharing policy with one bug. Experiment with it (machines, "
              "`ptsim.lab.check`, `m.check()`, traces) and name the method that is wrong, one of "
              f"{', '.join(FUNCTIONS)}, and the number of the rule it breaks.")

    def __str__(self) -> str:
        return self.prompt

    __repr__ = __str__

    def check(self, function, rule, student: str | None = None) -> Verdict:
        self.last = self._verdict(function, rule, student)
        self.tries += 1
        self.solved = self.solved or self.last.ok
        return self.last

    def _verdict(self, function, rule, student: str | None) -> Verdict:
        bug, number = _pick(student)
        name = normal(function) if isinstance(function, str) else None
        rule = normal(rule)
        if name not in FUNCTIONS:
            return Verdict(False, f"Not an answer: name one of {', '.join(FUNCTIONS)}, as a string, and a rule number.")
        if not isinstance(rule, int) or not 1 <= rule <= 19:
            return Verdict(False, "Not an answer: the rule is a number from 1 to 19 (notebooks/rules-of-sharing.md).")
        right_function, right_rule = name == bug.function, rule in (bug.rule, *bug.also)
        if right_function and right_rule:
            return Verdict(True, f"Right: Kernel{number}'s {name} is wrong, and it breaks rule {rule}.")
        if right_function:
            return Verdict(False, f"Half right: {name} is the method; rule {rule} is not the rule it breaks.")
        if right_rule:
            return Verdict(False, f"Half right: rule {rule} is broken, but not by {name}.")
        return Verdict(False, f"Not {name} and rule {rule}. Find a short scenario that fails (ptsim.lab.check finds one), then watch what each call does.")


FIND_THE_BUG = FindTheBug()
