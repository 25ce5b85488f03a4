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
from test_stateful import POLICIES, PROTS, VARIANTS, kernel_pages, observe

import ptsim

ARCHES = ("x86_64", "i386", "toy")
SWEEP_FRAMES = 96  # RAM of a sweep's machine: a few dozen frames for the hog to take
SWEPT = Counter()  # geometry -> failures for want of frames that the sweeps rolled back


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
        {p.pid: [(v.start, v.end, v.prot, v.shmem and v.shmem.id, v.pgoff, v.anon_vma, v.anon_vma_forked, v.account) for v in p._task.mm.vmas]
         for p in procs},
        {id(v.shmem): (dict(v.shmem.pages), v.shmem.nr_vmas) for p in procs for v in p._task.mm.vmas if v.shmem},
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
    m = ptsim.Machine(arch="x86_64", policy=VARIANTS[policy], ram=SWEEP_FRAMES * 4096)
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


def segfaults(call) -> bool:
    try:
        call()
    except ptsim.SegmentationFault:
        return True
    return False


class Scene:
    """A process `p` with four private pages straddling boundary `b`, and a MAP_SHARED page
    `far` beyond it, in the same table of `level` but not the same table below: a call across
    `b` finds that upper table and, unless `full`, installs a table under it. The first page
    is written, or (`full`) all four; then `p` may fork (`child`) or page two out (`swapped`)."""

    def __init__(self, arch, policy, level, full=False, forked=False, swapped=False):
        self.m = m = ptsim.Machine(arch=arch, policy=VARIANTS[policy], ram=SWEEP_FRAMES * ptsim.ARCHES[arch].page_size)
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
                 lambda s, r: s.p.read(s.addr(0), 4 * s.page) == s.old(0, 4) and segfaults(lambda: s.p.write(s.addr(2), b"x"))
                 and s.child.write(s.addr(2), b"x") is None),
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
            SWEPT[arch] += 1
    assert probe.frames - frames == free  # it failed with any frame fewer
    m.check()
    hog.exit()
    assert worked(s, result)
    m.check()


# -- random sequences with a failure injected at every allocation of every call --------------

INJECTED = Counter()  # (geometry, call) -> failures injected and rolled back, over the run
BOUNDED = Counter()  # geometry -> calls that completed, each within its frames_bound
# Where the calls land, page offsets -4..4 around each: boundaries of every level; on x86_64
# also 2 GiB beyond the PGD boundary, whose pages make a PUD table that the first write across
# the boundary installs a PMD table under, as in the reproducer. `mmap anywhere` adds the
# addresses it returns.
ANCHORS = {
    "x86_64": (1 << 21, 1 << 30, 1 << 39, (1 << 39) + (1 << 31)),
    "i386": (4 << 20, 8 << 20, 1 << 30),
    "toy": (512, 1024, 4096, 4096 + 512, 8192),
}
RANDOM_FRAMES = {"x86_64": 512, "i386": 512, "toy": 256}
ANCHOR = st.integers(0, 15)
OFFSET = st.integers(-4, 4)
NPAGES = st.sampled_from([1, 1, 2, 2, 3, 4, 5, "table", "table+1"])  # "table": one last-level table's span


class InjectEverywhere(RuleBasedStateMachine):
    """Each call is played with a failure injected at its first allocation, then its second,
    and so on, until it completes; after each failure the machine must be as it was and pass
    check(). RAM is small, and a real OutOfMemory may come first: it is held to the same."""

    arch = policy = None

    def __init__(self):
        super().__init__()
        self.m = ptsim.Machine(arch=self.arch, policy=VARIANTS[self.policy], ram=RANDOM_FRAMES[self.arch] * ptsim.ARCHES[self.arch].page_size)
        Probe(self.m)
        a = self.m.arch
        self.page, self.anchors = a.page_size, list(ANCHORS[self.arch])
        self.windows = [(self.anchors[0] - 8 * self.page, self.anchors[-1] + 2 * a.pte_span), (a.task_size - 4 * a.pte_span, a.task_size)]
        self.procs = []

    @initialize(shared=st.booleans(), fork=st.booleans())
    def first_process(self, shared, fork):
        """Eight pages around every anchor, the four below it written, and maybe a child."""
        p = self.m.spawn()
        self.procs.append(p)
        for anchor in self.anchors:
            self.populate(p, anchor, shared)
        if fork:
            self.procs.append(p.fork())

    def populate(self, p, anchor, shared, call=lambda name, f: f()):
        call("mmap", lambda: p.mmap(anchor - 4 * self.page, 8 * self.page, "rw", shared))
        call("write", lambda: p.write(anchor - 4 * self.page, (bytes(range(1, 256)) * (4 * self.page // 255 + 1))[: 4 * self.page]))

    def inject(self, name, call):
        k = self.m.kernel
        before = snapshot(self.m, self.procs, self.windows)
        for n in itertools.count():
            k.mem_map.fail_after = n
            try:
                result = call()
            except ptsim.OutOfMemory:
                injected, k.mem_map.fail_after = k.mem_map.fail_after is None, None
                assert snapshot(self.m, self.procs, self.windows) == before, f"{name}, allocation {n + 1} failed"
                self.m.check()
                if not injected:
                    return None  # it really ran out: the rollback has been checked all the same
                INJECTED[self.arch, name] += 1
                continue
            except (ptsim.SegmentationFault, ValueError):
                k.mem_map.fail_after = None
                assert snapshot(self.m, self.procs, self.windows) == before  # refused before any change
                return None
            assert k.mem_map.fail_after is not None, f"{name} completed though its allocation {n + 1} failed"
            k.mem_map.fail_after = None
            BOUNDED[self.arch] += 1
            return result

    def proc(self, i):
        return self.procs[i % len(self.procs)]

    def addr(self, anchor, off):
        return self.anchors[anchor % len(self.anchors)] + off * self.page

    def length(self, npages):
        entries = self.m.arch.entries
        return {"table": entries, "table+1": entries + 1}.get(npages, npages) * self.page

    @rule(i=st.integers(0, 7), anchor=ANCHOR, off=OFFSET, npages=NPAGES, prot=PROTS, shared=st.booleans())
    def mmap_fixed(self, i, anchor, off, npages, prot, shared):
        self.inject("mmap", lambda: self.proc(i).mmap(self.addr(anchor, off), self.length(npages), prot, shared))

    @rule(i=st.integers(0, 7), npages=NPAGES, shared=st.booleans())
    def mmap_anywhere(self, i, npages, shared):
        addr = self.inject("mmap anywhere", lambda: self.proc(i).mmap(None, self.length(npages), "rw", shared))
        if addr is not None and len(self.anchors) < 16:
            self.anchors.append(addr)

    @rule(i=st.integers(0, 7), anchor=ANCHOR, off=OFFSET, npages=NPAGES)
    def munmap(self, i, anchor, off, npages):
        self.inject("munmap", lambda: self.proc(i).munmap(self.addr(anchor, off), self.length(npages)))

    @rule(i=st.integers(0, 7), anchor=ANCHOR, off=OFFSET, npages=NPAGES, prot=PROTS)
    def mprotect(self, i, anchor, off, npages, prot):
        self.inject("mprotect", lambda: self.proc(i).mprotect(self.addr(anchor, off), self.length(npages), prot))

    @rule(i=st.integers(0, 7), anchor=ANCHOR, off=OFFSET, npages=NPAGES)
    def madvise(self, i, anchor, off, npages):
        self.inject("madvise", lambda: self.proc(i).madvise(self.addr(anchor, off), self.length(npages), "dontneed"))

    @rule(i=st.integers(0, 7), anchor=ANCHOR, off=OFFSET, at=st.integers(0, 63), pages=st.integers(0, 2), tail=st.integers(1, 64),
          value=st.integers(1, 255))
    def write(self, i, anchor, off, at, pages, tail, value):
        data = bytes([value]) * (pages * self.page + tail)
        self.inject("write", lambda: self.proc(i).write(self.addr(anchor, off) + at, data))

    @rule(i=st.integers(0, 7), anchor=ANCHOR, off=OFFSET, at=st.integers(0, 63), pages=st.integers(0, 2), tail=st.integers(1, 64))
    def read(self, i, anchor, off, at, pages, tail):
        self.inject("read", lambda: self.proc(i).read(self.addr(anchor, off) + at, pages * self.page + tail))

    @rule(i=st.integers(0, 7), n=st.integers(0, 1 << 16))
    def swap_out(self, i, n):
        p = self.proc(i)
        mapped = sorted({v for lo, hi in self.windows for v in kernel_pages(self.m, p, lo, hi)})
        if mapped:
            self.inject("swap_out", lambda: self.m.swap_out(p, mapped[n % len(mapped)] * self.page))

    @precondition(lambda self: len(self.procs) < 5)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        child = self.inject("fork", lambda: self.proc(i).fork())
        if child is not None:
            self.procs.append(child)

    @rule(i=st.integers(0, 7), anchor=ANCHOR, shared=st.booleans())
    def exec(self, i, anchor, shared):
        """A new program, which maps and writes pages around one anchor: exec leaves nothing
        for the calls after it to work on, and the random choice of rules often execs."""
        self.inject("exec", lambda: self.proc(i).exec())
        self.populate(self.proc(i), self.anchors[anchor % len(self.anchors)], shared, self.inject)

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i):
        p = self.proc(i)
        self.inject("exit", p.exit)
        self.procs.remove(p)

    @invariant()
    def kernel_keeps_its_invariants(self):
        self.m.check()


RANDOM_SETTINGS = settings(max_examples=30, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
for _arch, _policy in itertools.product(ARCHES, POLICIES):
    _name = f"{_arch}_{_policy.replace('/', '_')}"
    _machine = type(f"InjectEverywhere_{_name}", (InjectEverywhere,), dict(arch=_arch, policy=_policy))
    globals()[f"TestInjectEverywhere_{_name}"] = _case = _machine.TestCase
    _case.settings = RANDOM_SETTINGS
del _arch, _policy, _name, _machine, _case  # not tests of their own


def test_report_the_failures_rolled_back():
    """The figures of this run, after the tests above (pytest -s shows them)."""
    print(f"\nsweeps: {sum(SWEPT.values())} calls out of frames rolled back {dict(SWEPT)}")
    print(f"random sequences: {sum(INJECTED.values())} injected failures rolled back, "
          f"{sum(BOUNDED.values())} calls completed within their frames_bound {dict(BOUNDED)}")
    for arch in ARCHES:
        calls = {call: n for (a, call), n in sorted(INJECTED.items()) if a == arch}
        print(f"  {arch}: {sum(calls.values())} {calls}")
