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
