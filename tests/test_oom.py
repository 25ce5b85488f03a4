"""Running out of memory in the middle of a call: it completes, or it changes nothing at all.

Three kinds of test, on every geometry and policy:

- the reproducer of a rollback that left an upper entry pointing at a freed frame;
- sweeps: one call across a table boundary of each level, with 0, 1, 2, ... frames left free
  by another process, until it completes; every failure must leave the machine as it was;
- random sequences of every call with a failure injected (`MemMap.fail_after`) at each of
  its allocations in turn, as SQLite's tests fail each malloc in turn.

"As it was" is everything `observe` sees, and more: every byte of physical memory (tables,
pages, free frames), the frame metadata and free lists, every VMA and the swap contents.
Every call that completes must also have allocated no more frames than its transactions
declared: a transaction with that many free saves nothing, so a bound that lies loses state.
"""

from __future__ import annotations

import itertools
from collections import Counter
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_stateful import POLICIES, PROTS, kernel_pages, observe

import ptsim

ARCHES = ("x86_64", "i386", "toy")
SWEEP_FRAMES = 96  # RAM of a sweep's machine: a few dozen frames for the hog to take


class Probe:
    """Counts the frames a machine's kernel allocates, and holds every transaction to its bound:
    one that completes must have allocated at most the `frames_bound` it declared."""

    def __init__(self, machine):
        k = machine.kernel
        self.frames = 0
        alloc, transaction = k.mem_map.alloc, k.transaction

        def counting_alloc(n, kind):
            pfns = alloc(n, kind)
            self.frames += n
            return pfns

        @contextmanager
        def bounded(mm, start, end, frames_bound):
            before = self.frames
            with transaction(mm, start, end, frames_bound):
                yield
            assert self.frames - before <= frames_bound, f"allocated {self.frames - before} > frames_bound {frames_bound}"

        k.mem_map.alloc, k.transaction = counting_alloc, bounded


def snapshot(machine, procs, windows):
    """Everything about `machine` a rollback must put back, `observe`d in each window."""
    k = machine.kernel
    return (
        [observe(machine, procs, lo, hi) for lo, hi in windows],
        k.phys.bytes.tobytes(),
        [a.tobytes() if hasattr(a, "tobytes") else a for a in k.mem_map.snapshot()],
        {p.pid: [(v.start, v.end, v.prot, v.shmem and v.shmem.id, v.pgoff, v.anon_vma, v.anon_vma_forked, v.account) for v in p.mm.vmas]
         for p in procs},
        {id(v.shmem): (dict(v.shmem.pages), v.shmem.nr_vmas) for p in procs for v in p.mm.vmas if v.shmem},
        dict(k.swap.data),
        sorted(k.mms),
    )


def leave_free(machine, n):
    """A new process that takes frames until exactly `n` are free; its exit gives them back."""
    hog, page = machine.spawn(), machine.arch.page_size
    size = machine.free_frames * page
    addr = hog.mmap(None, size, "rw", False)
    hog.read(addr, size)  # its tables, mapping the zero page: from now on a write takes one frame
    assert machine.free_frames >= n
    if machine.free_frames > n:
        hog.write(addr, bytes((machine.free_frames - n) * page))
    assert machine.free_frames == n
    return hog


# -- the reproducer ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_a_failed_write_leaves_no_entry_to_a_freed_table(policy):
    """A write from below 512 GiB to above it, where a table of the upper level already exists
    beyond the boundary: the fault installs a PMD table under it, then runs out on the PTE
    table. The rollback used to restore only the tables on the way to the first address,
    leaving that PUD's entry pointing at the freed PMD frame, which the next table
    allocation handed to another process."""
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=SWEEP_FRAMES * 4096)
    p, boundary = m.spawn(), 1 << 39
    p.mmap(boundary - 4096, 8192, "rw", False)
    p.mmap(boundary + (1 << 30), 4096, "rw", False)
    p.write(boundary - 4096, b"below")
    p.write(boundary + (1 << 30), b"beyond")
    for free in range(3):  # the PMD table, the PTE table, the page: it fails on one of them
        hog = leave_free(m, free)
        with pytest.raises(ptsim.OutOfMemory):
            p.write(boundary - 4096, bytes(8192))
        m.check()
        hog.exit()
    # A table allocated now must not be one p still points at: q's memory stays q's.
    q = m.spawn()
    q.mmap(1 << 39, 4096, "rw", False)
    q.write(1 << 39, b"q's own")
    p.write(boundary - 4096, b"p" * 8192)
    m.check()
    assert q.read(1 << 39, 7) == b"q's own"
    assert p.read(boundary - 4096, 8192) == b"p" * 8192
    assert p.read(boundary + (1 << 30), 6) == b"beyond"


# -- the injection hook ------------------------------------------------------------------


def test_an_injected_failure_hits_the_chosen_allocation_and_disarms():
    m = ptsim.Machine(arch="toy", policy="copy", ram=1 << 14)
    p = m.spawn()
    a = p.mmap(512 - 2 * 64, 4 * 64, "rw", False)  # across a PTE table boundary
    before = snapshot(m, [p], [(0, m.arch.task_size)])
    m.kernel.mem_map.fail_after = 2  # the PMD table, the PTE table, then the first page fails
    with pytest.raises(ptsim.OutOfMemory, match="injected"):
        p.write(a, bytes(4 * 64))
    assert m.kernel.mem_map.fail_after is None
    assert snapshot(m, [p], [(0, m.arch.task_size)]) == before
    m.check()
    p.write(a, b"x" * 256)  # disarmed: it completes
    assert p.read(a, 256) == b"x" * 256


# -- sweeps: every count of free frames a call can meet --------------------------------------

# (geometry, level): calls straddle the first address where a table of `level` begins, so
# they cross a boundary between the entries of the level above: x86_64's PGD (512 GiB), PUD
# (1 GiB) and PMD (2 MiB) boundaries, i386's PGD boundary, toy's PGD and PMD boundaries.
BOUNDARIES = [("x86_64", 1), ("x86_64", 2), ("x86_64", 3), ("i386", 1), ("toy", 1), ("toy", 2)]


def page_bytes(machine, n):
    return bytes([n]) * machine.arch.page_size


class Scene:
    """A process `p` with four private pages straddling boundary `b`, and one MAP_SHARED
    page `far` in the next table of the level below, so that the upper table beyond `b`
    exists before the call does. Only the first page is touched, or (`full`) all, then
    `p` may fork once (`child`) or page two of them out (`swapped`)."""

    def __init__(self, arch, policy, level, full=False, forked=False, swapped=False):
        self.m = m = ptsim.Machine(arch=arch, policy=policy, ram=SWEEP_FRAMES * ptsim.ARCHES[arch].page_size)
        a, self.page = m.arch, m.arch.page_size
        self.b = a.span(level)
        self.far = self.b + a.span(min(level + 1, a.levels - 1))
        self.p = m.spawn()
        self.p.mmap(self.b - 2 * self.page, 4 * self.page, "rw", False)
        self.p.mmap(self.far, self.page, "rw", True)
        self.p.write(self.far, b"far")
        for i in range(4 if full else 1):
            self.p.write(self.addr(i), page_bytes(m, i + 1))
        self.child = self.p.fork() if forked else None
        for i in (1, 2) if swapped else ():
            assert m.swap_out(self.p, self.addr(i))
        self.windows = [(self.b - 4 * self.page, self.far + self.page)]

    def addr(self, i):
        """Page i of the four: pages 2 and 3 lie beyond the boundary."""
        return self.b + (i - 2) * self.page

    def procs(self):
        return [q for q in (self.p, self.child) if q is not None and not q.exited]

    def old(self, i, n=1):
        return b"".join(page_bytes(self.m, j + 1) for j in range(i, i + n))


# name: (Scene arguments, the call, a check of what it did once it completes)
CALLS = {
    "write": (dict(), lambda s: s.p.write(s.addr(1), b"w" * 2 * s.page),
              lambda s, r: s.p.read(s.addr(1), 2 * s.page) == b"w" * 2 * s.page),
    "read": (dict(), lambda s: s.p.read(s.addr(1), 2 * s.page), lambda s, r: r == bytes(2 * s.page)),
    "write_swapped": (dict(full=True, swapped=True), lambda s: s.p.write(s.addr(1) + 1, b"w" * s.page),
                      lambda s, r: s.p.read(s.addr(1), 2 * s.page) == s.old(1)[:1] + b"w" * s.page + s.old(2)[1:]),
    "read_swapped": (dict(full=True, swapped=True), lambda s: s.p.read(s.addr(0), 4 * s.page), lambda s, r: r == s.old(0, 4)),
    "write_after_fork": (dict(full=True, forked=True), lambda s: s.p.write(s.addr(1), b"w" * 2 * s.page),
                         lambda s, r: s.child.read(s.addr(1), 2 * s.page) == s.old(1, 2)
                         and s.p.read(s.addr(1), 2 * s.page) == b"w" * 2 * s.page),
    "fork": (dict(full=True), lambda s: s.p.fork(), lambda s, r: r.read(s.addr(0), 4 * s.page) == s.old(0, 4)),
    "fork_again": (dict(full=True, forked=True), lambda s: s.p.fork(),
                   lambda s, r: r.read(s.addr(0), 4 * s.page) == s.old(0, 4) and r.read(s.far, 3) == b"far"),
    "mprotect": (dict(full=True, forked=True), lambda s: s.p.mprotect(s.addr(1), 2 * s.page, "r"),
                 lambda s, r: s.p.read(s.addr(0), 4 * s.page) == s.old(0, 4)
                 and pytest.raises(ptsim.SegmentationFault, s.p.write, s.addr(2), b"x") is not None),
    "munmap": (dict(full=True, forked=True), lambda s: s.p.munmap(s.addr(1), 2 * s.page),
               lambda s, r: s.p.read(s.addr(3), s.page) == s.old(3) and s.child.read(s.addr(0), 4 * s.page) == s.old(0, 4)),
    "madvise": (dict(full=True, forked=True), lambda s: s.p.madvise(s.addr(1), 2 * s.page, "dontneed"),
                lambda s, r: s.p.read(s.addr(0), 4 * s.page) == s.old(0) + bytes(2 * s.page) + s.old(3)
                and s.child.read(s.addr(0), 4 * s.page) == s.old(0, 4)),
    "mmap_fixed": (dict(full=True, forked=True), lambda s: s.p.mmap(s.addr(1), 2 * s.page, "rw", True),
                   lambda s, r: s.p.read(s.addr(0), 4 * s.page) == s.old(0) + bytes(2 * s.page) + s.old(3)
                   and s.child.read(s.addr(0), 4 * s.page) == s.old(0, 4)),
    "exec": (dict(full=True, forked=True), lambda s: s.p.exec(), lambda s, r: s.child.read(s.addr(0), 4 * s.page) == s.old(0, 4)),
    "exit": (dict(full=True, forked=True), lambda s: s.child.exit(), lambda s, r: s.p.read(s.addr(0), 4 * s.page) == s.old(0, 4)),
}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("arch, level", BOUNDARIES, ids=[f"{a}-{ptsim.ARCHES[a].level_names[level - 1]}" for a, level in BOUNDARIES])
def test_a_call_across_a_boundary_completes_or_changes_nothing(arch, level, call, policy):
    """With 0, 1, 2, ... frames free, the call fails and changes nothing, until it has all it
    takes: it then completes, and the machine works on once the frames are given back."""
    args, run, worked = CALLS[call]
    s = Scene(arch, policy, level, **args)
    m, probe = s.m, Probe(s.m)
    for free in itertools.count():
        hog = leave_free(m, free)
        procs = [*s.procs(), hog]
        before, frames = snapshot(m, procs, s.windows), probe.frames
        try:
            result = run(s)
            break
        except ptsim.OutOfMemory:
            assert snapshot(m, procs, s.windows) == before, f"{free} free"
            m.check()
            hog.exit()
    assert probe.frames - frames == free  # it failed with any frame fewer
    m.check()
    hog.exit()
    assert worked(s, result)
    m.check()
