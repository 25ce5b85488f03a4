"""Long random sequences of every call, over several processes, on every policy and the oracle.

Every step is played on `copy`, `shared`, `upper_wp`, the two sharing policies with their other
switches (VARIANTS) and the oracle; their answers must agree: every byte read, every
SegmentationFault (and its address), every ValueError. After every step every kernel passes
check(), `copy` and the oracle agree on every process's minor faults, VmRSS and mapped pages,
and all agree on which (process, page) pairs share one page. The oracle knows no tables, so
it says nothing of the faults a shared table saves or costs: the rules tests count those.

A second machine plays random calls on one small-RAM kernel: whenever a call runs out of
frames, everything a process or the kernel can observe must be as it was before the call.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import ptsim
from ptsim.checking.oracle import Oracle
from ptsim.kernel.core import MAPPED
from ptsim.kernel.fork import SharedPolicy, UpperWrprotectPolicy

PROTS = st.sampled_from(["", "r", "rw"])
# "copy", then the sharing policies as they come, then each sharing policy with its other switches:
# a read fault that unshares first (Hugh Dickins), write-protect at every fork (Phillips' patch)
# and PG_anon_exclusive kept per process at fork.
VARIANTS = {
    **ptsim.POLICIES,
    "shared/hugh": SharedPolicy(read_fault="unshare", wrprotect="every_fork", exclusive_at_fork=True),
    "upper_wp/hugh": UpperWrprotectPolicy(read_fault="unshare", wrprotect="every_fork", exclusive_at_fork=True),
}
POLICIES = tuple(VARIANTS)
# Where the calls land: (first address, pages, table boundaries in it). On x86_64 the window
# straddles 1 GiB, so it spans two PMD tables and parts of four PTE tables. Most calls aim near
# a boundary, so that they meet each other's pages and tables.
WINDOWS = {
    "toy": (1024, 48, (0, 8, 16, 24, 32, 40)),  # 6 last-level tables of 8 pages, 2 PMD tables
    "x86_64": ((1 << 30) - 768 * 4096, 1536, (256, 768, 1280)),
    "i386": ((1 << 30) - 1536 * 4096, 3072, (512, 1536, 2560)),
}


def pages_near(boundaries, npages):
    """A page of the window, most often within a few pages of a table boundary."""
    near = st.tuples(st.sampled_from(boundaries), st.integers(-3, 3)).map(lambda t: (t[0] + t[1]) % npages)
    return st.one_of(near, near, st.integers(0, npages - 1))


PAGE = st.runner().flatmap(lambda machine: pages_near(machine.boundaries, machine.npages))


def outcome(call):
    """What a call did, in a form the three models can be compared by."""
    try:
        return ("ok", call())
    except ptsim.SegmentationFault as e:
        return ("SIGSEGV", e.address)
    except ValueError:
        return ("ValueError", None)


def kernel_pages(machine, process, start, end) -> dict[int, int]:
    """vpn -> pfn for every page `process` maps in [start, end), read from its tables."""
    k, arch = machine.kernel, machine.arch
    pages = {}
    for pmd, first, last, base in k.leaf_slots(process.mm, start, end):
        for index in range(first, last):
            table = k.slot_table((pmd, index))
            if table is None:
                continue
            row = k.phys.tables[table]
            first_vpn = (base + index * arch.pte_span) >> arch.page_shift
            for i in np.flatnonzero(row & MAPPED):
                if start >> arch.page_shift <= first_vpn + i < end >> arch.page_shift:
                    pages[first_vpn + int(i)] = k.entry_pfn(row[i])
    return pages


def assert_same_sharing(left: dict, right: dict) -> None:
    """Two pairs map one page in `left` exactly when they map one page in `right`."""
    forward, backward = {}, {}
    for key in left.keys() & right.keys():
        a, b = left[key], right[key]
        assert forward.setdefault(a, b) == b, f"{key}: {a} is shared differently"
        assert backward.setdefault(b, a) == a, f"{key}: {b} is shared differently"


class ThreeWay(RuleBasedStateMachine):
    arch = "toy"
    ram = 1 << 16  # 1024 frames: never runs out here, and check() stays quick

    def __init__(self):
        super().__init__()
        self.machines = {p: ptsim.Machine(arch=self.arch, policy=VARIANTS[p], ram=self.ram) for p in POLICIES}
        a = self.machines["copy"].arch
        self.page = a.page_size
        self.oracle = Oracle(a.page_size, a.task_size, a.mmap_min_addr, a.thp_mmap_align)
        self.base, self.npages, self.boundaries = WINDOWS[self.arch]
        self.procs = []  # the live ones: (one process per policy, in POLICIES order, oracle pid)

    @initialize(shared=st.booleans())
    def first_process_maps_the_window(self, shared):
        self.procs.append((*(m.spawn() for m in self.machines.values()), self.oracle.spawn()))
        n = self.npages * self.page
        self.play(0, lambda p: p.mmap(self.base, n, "rw", shared), lambda o: self.oracle.mmap(o, self.base, n, "rw", shared))

    def play(self, i, kernel_call, oracle_call):
        *processes, op = self.procs[i % len(self.procs)]
        results = [outcome(lambda: kernel_call(p)) for p in processes] + [outcome(lambda: oracle_call(op))]
        assert all(r == results[-1] for r in results), dict(zip((*POLICIES, "oracle"), results))
        return results[0]

    def each_kernel(self, i):
        """(machine, its process number i) for every policy."""
        return zip(self.machines.values(), self.procs[i % len(self.procs)][:-1])

    def addr(self, page):
        return self.base + page * self.page

    def length(self, page, npages):
        return min(npages, self.npages - page) * self.page

    # -- the calls --------------------------------------------------------------------------

    @rule(i=st.integers(0, 7), page=PAGE, npages=st.one_of(st.integers(1, 20), st.sampled_from([512, 1024])), prot=PROTS, shared=st.booleans())
    def mmap_fixed(self, i, page, npages, prot, shared):
        a, n = self.addr(page), self.length(page, npages)
        self.play(i, lambda p: p.mmap(a, n, prot, shared), lambda o: self.oracle.mmap(o, a, n, prot, shared))

    @rule(i=st.integers(0, 7), npages=st.one_of(st.integers(1, 4), st.sampled_from([8, 16, 24])), shared=st.booleans(),
          data=st.binary(min_size=1, max_size=8))
    def mmap_anywhere_and_use(self, i, npages, shared, data):
        n = npages * self.page
        kind, addr = self.play(i, lambda p: p.mmap(None, n, "rw", shared), lambda o: self.oracle.mmap(o, None, n, "rw", shared))
        if kind == "ok":
            self.play(i, lambda p: p.write(addr, data), lambda o: self.oracle.write(o, addr, data))
            self.play(i, lambda p: p.read(addr, len(data)), lambda o: self.oracle.read(o, addr, len(data)))

    @rule(i=st.integers(0, 7), page=PAGE, npages=st.sampled_from([1, 2, 3, 7, 8, 9, 16, 511, 512, 513, 1024]))
    def munmap(self, i, page, npages):
        a, n = self.addr(page), self.length(page, npages)
        self.play(i, lambda p: p.munmap(a, n), lambda o: self.oracle.munmap(o, a, n))

    @rule(i=st.integers(0, 7), page=PAGE, npages=st.sampled_from([1, 2, 5, 8, 9, 16, 512, 600]), prot=PROTS)
    def mprotect(self, i, page, npages, prot):
        a, n = self.addr(page), self.length(page, npages)
        self.play(i, lambda p: p.mprotect(a, n, prot), lambda o: self.oracle.mprotect(o, a, n, prot))

    @rule(i=st.integers(0, 7), page=PAGE, npages=st.sampled_from([1, 3, 8, 16, 512, 520]))
    def madvise_dontneed(self, i, page, npages):
        a, n = self.addr(page), self.length(page, npages)
        self.play(i, lambda p: p.madvise(a, n, "dontneed"), lambda o: self.oracle.madvise(o, a, n, "dontneed"))

    @rule(i=st.integers(0, 7), page=PAGE, offset=st.integers(0, 4095), data=st.binary(min_size=1, max_size=150))
    def write(self, i, page, offset, data):
        a = self.addr(page) + offset % self.page
        self.play(i, lambda p: p.write(a, data), lambda o: self.oracle.write(o, a, data))

    @rule(i=st.integers(0, 7), page=PAGE, offset=st.integers(0, 4095), n=st.integers(0, 150))
    def read(self, i, page, offset, n):
        a = self.addr(page) + offset % self.page
        self.play(i, lambda p: p.read(a, n), lambda o: self.oracle.read(o, a, n))

    @precondition(lambda self: len(self.procs) < 6)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        *processes, op = self.procs[i % len(self.procs)]
        self.procs.append((*(p.fork() for p in processes), self.oracle.fork(op)))

    @rule(i=st.integers(0, 7))
    def exec(self, i):
        self.play(i, lambda p: p.exec(), lambda o: self.oracle.exec(o))

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i):
        self.play(i, lambda p: p.exit(), lambda o: self.oracle.exit(o))
        del self.procs[i % len(self.procs)]

    # -- after every step -------------------------------------------------------------------

    @invariant()
    def kernels_keep_their_invariants(self):
        for machine in self.machines.values():
            machine.check()

    @invariant()
    def copy_faults_and_counts_like_the_oracle(self):
        for *processes, op in self.procs:
            assert processes[0].minflt == self.oracle.procs[op].minflt
            assert processes[0].mm.rss == self.oracle.rss(op)  # in pages: status() rounds to kB
            assert {p.mm.vm_size() for p in processes} == {self.oracle.vm_size(op)}

    def mapped(self):
        """Per policy, (process number, vpn) -> frame; for the oracle, -> page id."""
        start, end = self.base, self.base + self.npages * self.page
        kernels, oracle = {name: {} for name in POLICIES}, {}
        for n, (*processes, op) in enumerate(self.procs):
            for name, p in zip(POLICIES, processes):
                kernels[name].update(((n, v), f) for v, f in kernel_pages(self.machines[name], p, start, end).items())
            for vpn in range(start // self.page, end // self.page):
                page = self.oracle.page_of(op, vpn)
                if page is not None:
                    oracle[n, vpn] = page
        return kernels, oracle

    @invariant()
    def every_model_shares_the_same_pages(self):
        kernels, oracle = self.mapped()
        assert kernels["copy"].keys() == oracle.keys()
        for frames in kernels.values():
            # Sharing tables maps more at fork (MAP_SHARED and zero pages too), never less.
            assert oracle.keys() <= frames.keys()
            assert_same_sharing(frames, oracle)

    @invariant()
    def every_model_holds_the_same_bytes(self):
        kernels, oracle = self.mapped()
        for (n, vpn), page in oracle.items():
            mapping = self.oracle.procs[self.procs[n][-1]].maps[vpn]
            expected = bytes(self.page) if mapping.page is None else bytes(mapping.page.data)
            for name, frames in kernels.items():
                held = self.machines[name].kernel.phys.frame_bytes(frames[n, vpn]).tobytes()
                assert held == expected, f"{name}: process {n}, page {vpn:#x}"


class ThreeWayWithReclaim(ThreeWay):
    """The same, with page-out at random. Reclaim is invisible in the bytes, so every read and
    error must still agree; it is not in fault counts (swap-in is a major fault, and a page
    swapped in after a read is mapped read-only) nor in which frames are shared (each swap
    entry reads back into a page of its own), so those comparisons are left out here."""

    @rule(i=st.integers(0, 7), n=st.integers(0, 1 << 16))
    def swap_out(self, i, n):
        """Page out the n-th page the process maps (in the shared kernel, which maps more)."""
        sp = self.procs[i % len(self.procs)][POLICIES.index("shared")]
        mapped = sorted(kernel_pages(self.machines["shared"], sp, self.base, self.base + self.npages * self.page))
        if mapped:
            for machine, p in self.each_kernel(i):
                machine.swap_out(p, mapped[n % len(mapped)] * self.page)

    @precondition(lambda self: len(self.procs) < 6)
    @rule(i=st.integers(0, 7), data=st.binary(min_size=1, max_size=8), child_swaps=st.booleans())
    def write_fork_swap_out(self, i, data, child_swaps):
        """Write a fresh page, fork, and page it out from parent or child: under `shared` the
        page-out goes through a shared table (sharing rule 14)."""
        n = 2 * self.page
        kind, addr = self.play(i, lambda p: p.mmap(None, n, "rw", False), lambda o: self.oracle.mmap(o, None, n, "rw", False))
        if kind != "ok":
            return
        self.play(i, lambda p: p.write(addr, data), lambda o: self.oracle.write(o, addr, data))
        parent = i % len(self.procs)
        self.fork(i)
        for machine, p in self.each_kernel(len(self.procs) - 1 if child_swaps else parent):
            machine.swap_out(p, addr)

    def copy_faults_and_counts_like_the_oracle(self):
        pass

    def every_model_shares_the_same_pages(self):
        pass

    def every_model_holds_the_same_bytes(self):
        pass


class ThreeWayX86(ThreeWay):
    arch = "x86_64"
    ram = 8 << 20


class ThreeWayI386(ThreeWay):
    arch = "i386"
    ram = 8 << 20


SETTINGS = settings(max_examples=150, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TestThreeWayToy = ThreeWay.TestCase
TestThreeWayToy.settings = SETTINGS
TestThreeWayX86 = ThreeWayX86.TestCase
TestThreeWayX86.settings = SETTINGS
TestThreeWayWithReclaim = ThreeWayWithReclaim.TestCase
TestThreeWayWithReclaim.settings = SETTINGS
TestThreeWayI386 = ThreeWayI386.TestCase
TestThreeWayI386.settings = settings(SETTINGS, max_examples=50)


def observe(machine, procs, start, end):
    """Everything a process or the kernel can see, read without side effects."""
    k = machine.kernel
    seen = {"free": machine.free_frames, "counters": machine.counters, "swap": dict(k.swap.count)}
    for p in procs:
        pages = kernel_pages(machine, p, start, end)
        seen[p.pid] = (p.status(), p.minflt, p.majflt, pages, {v: k.phys.frame_bytes(f).tobytes() for v, f in pages.items()})
    return seen


class OutOfMemoryLeavesNoTrace(RuleBasedStateMachine):
    """Calls on a kernel with a few dozen frames: each either completes or changes nothing."""

    def __init__(self):
        super().__init__()
        self.machine = None
        self.procs = []

    @initialize(policy=st.sampled_from(POLICIES), frames=st.integers(24, 64))
    def boot(self, policy, frames):
        self.machine = ptsim.Machine(arch="toy", policy=VARIANTS[policy], ram=frames * 64)
        self.procs = [self.machine.spawn()]
        self.base, self.npages, _ = WINDOWS["toy"]
        self.end = self.base + self.npages * 64

    def attempt(self, call):
        before = observe(self.machine, self.procs, self.base, self.end)
        try:
            return call()
        except ptsim.OutOfMemory:
            assert observe(self.machine, self.procs, self.base, self.end) == before
        except (ptsim.SegmentationFault, ValueError):
            pass

    @rule(i=st.integers(0, 7), page=st.integers(0, 47), npages=st.integers(1, 40), shared=st.booleans())
    def mmap(self, i, page, npages, shared):
        self.attempt(lambda: self.procs[i % len(self.procs)].mmap(self.base + page * 64, npages * 64, "rw", shared))

    @rule(i=st.integers(0, 7), page=st.integers(0, 47), data=st.binary(min_size=1, max_size=600))
    def write(self, i, page, data):
        self.attempt(lambda: self.procs[i % len(self.procs)].write(self.base + page * 64, data))

    @rule(i=st.integers(0, 7), page=st.integers(0, 47), n=st.integers(1, 600))
    def read(self, i, page, n):
        self.attempt(lambda: self.procs[i % len(self.procs)].read(self.base + page * 64, n))

    @rule(i=st.integers(0, 7), page=st.integers(0, 47), npages=st.integers(1, 20), prot=PROTS)
    def mprotect(self, i, page, npages, prot):
        self.attempt(lambda: self.procs[i % len(self.procs)].mprotect(self.base + page * 64, npages * 64, prot))

    @rule(i=st.integers(0, 7), page=st.integers(0, 47), npages=st.integers(1, 20))
    def munmap(self, i, page, npages):
        self.attempt(lambda: self.procs[i % len(self.procs)].munmap(self.base + page * 64, npages * 64))

    @rule(i=st.integers(0, 7), page=st.integers(0, 47), npages=st.integers(1, 20))
    def madvise(self, i, page, npages):
        self.attempt(lambda: self.procs[i % len(self.procs)].madvise(self.base + page * 64, npages * 64, "dontneed"))

    @rule(i=st.integers(0, 7), n=st.integers(0, 1 << 16))
    def swap_out(self, i, n):
        process = self.procs[i % len(self.procs)]
        mapped = sorted(kernel_pages(self.machine, process, self.base, self.end))
        if mapped:
            self.machine.swap_out(process, mapped[n % len(mapped)] * 64)

    @precondition(lambda self: len(self.procs) < 5)
    @rule(i=st.integers(0, 7))
    def fork(self, i):
        child = self.attempt(lambda: self.procs[i % len(self.procs)].fork())
        if child is not None:
            self.procs.append(child)

    @precondition(lambda self: len(self.procs) > 1)
    @rule(i=st.integers(0, 7))
    def exit(self, i):
        self.procs.pop(i % len(self.procs)).exit()

    @invariant()
    def kernel_keeps_its_invariants(self):
        if self.machine is not None:
            self.machine.check()


TestOutOfMemoryLeavesNoTrace = OutOfMemoryLeavesNoTrace.TestCase
TestOutOfMemoryLeavesNoTrace.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_frame_is_free_after_every_process_exits(policy):
    m = ptsim.Machine(arch="toy", policy=VARIANTS[policy], ram=1 << 16)
    p = m.spawn()
    a = p.mmap(None, 64 * 64, "rw", False)
    s = p.mmap(None, 16 * 64, "rw", True)
    p.write(a, bytes(range(256)) * 16)
    p.write(s, b"shared")
    children = [p.fork() for _ in range(3)]
    children[0].write(a + 640, b"child")
    children[1].fork().exit()
    for q in [p, *children]:
        q.exit()
    m.check()
    assert m.free_frames == m.kernel.phys.nframes - 2  # all but frame 0 and the zero page
