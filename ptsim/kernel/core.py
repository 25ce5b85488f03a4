"""The kernel's state and the primitives every kernel function builds on.

`Kernel` owns the hardware (physical memory, MMU, TLB), `mem_map`, the tasks and their mms,
the fork policy and the tracer. The mm algorithms live beside it as functions that take the
kernel first, as Linux's take an mm: `memory.py` (faults, zap, mprotect), `fork.py` (the
policies and copy_page_range), `syscalls.py` (the entry points and their argument checks).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import OutOfMemory
from ..hardware import MMU, TLB, Arch, PhysicalMemory
from ..hardware.arch import PFN_SHIFT, _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_TABLE
from .mm import MM
from .page import PG_PGTABLE, ZERO_PFN, MemMap
from .swap import SwapDevice
from .trace import Tracer

MAPPED = _PAGE_PRESENT | _PAGE_PROTNONE  # an entry that maps a page (Linux's pte_present)
# Tables a bulk pass works on at once (256 KiB on x86_64): small enough that a second pass over
# them finds them still in the host's cache.
GATHER_TABLES = 64


@dataclass(eq=False)
class Task:
    pid: int
    mm: MM | None
    ppid: int = 0  # the pid that forked it, as getppid(2) reports (Linux's real_parent); 0 if spawned
    minflt: int = 0  # as getrusage(2) counts: every fault the kernel resolved without I/O
    majflt: int = 0  # faults that read a page back from swap

    @property
    def exited(self) -> bool:
        return self.mm is None


class Kernel:
    def __init__(self, arch: Arch, ram: int, policy):
        self.arch = arch
        self.phys = PhysicalMemory(arch, ram)
        self.mem_map = MemMap(self.phys)
        self.tlb = TLB()
        self.mmu = MMU(self.phys, self.tlb)
        self.policy = policy
        self.tracer = Tracer()
        self.swap = SwapDevice(1 << arch.pfn_bits)  # the slot goes in the PFN field
        self.tasks: dict[int, Task] = {}
        self.mms: dict[int, MM] = {}  # by pcid
        self._next_pid = self._next_pcid = self._next_shmem = 1
        # Experiments only: TLB flush sites (named by the kernel function) to leave out, to see
        # what a missing flush lets a process do. The checker reports the stale entries.
        self.skip_tlb_flush: set[str] = set()
        # Linux's /sys/kernel/debug/fault_around_bytes: a read fault on MAP_SHARED memory also
        # maps the pages of the shmem object already present around it (do_fault_around).
        # Linux's default is 65536; here it is one page, fault-around off (as writing PAGE_SIZE
        # there does), because the oracle, which has no tables, cannot tell where a table ends.
        self.fault_around_bytes = arch.page_size

    # -- entries ---------------------------------------------------------------------------

    def entry(self, table: int, index: int) -> int:
        return int(self.phys.tables[table, index])

    def set_entry(self, table: int, index: int, value: int) -> None:
        self.phys.tables[table, index] = value

    def entry_pfn(self, entry: int) -> int:
        return (int(entry) & self.arch.pfn_mask) >> PFN_SHIFT

    def pfns_of(self, entries: np.ndarray) -> np.ndarray:
        return ((entries & self.arch.dtype.type(self.arch.pfn_mask)) >> PFN_SHIFT).astype(np.int64)

    def swap_entries(self, entries: np.ndarray) -> np.ndarray:
        """Which of `entries` hold a swap slot: those neither empty nor mapped."""
        return (entries != 0) & ((entries & MAPPED) == 0)

    def swap_slots(self, entries: np.ndarray) -> np.ndarray:
        """Swap slots that `entries` hold."""
        return self.pfns_of(entries[self.swap_entries(entries)])

    def counted_pages(self, entries: np.ndarray) -> np.ndarray:
        """Which of `entries` map a counted page (VmRSS): every mapped entry but the zero page's."""
        zero = self.arch.dtype.type(ZERO_PFN << PFN_SHIFT)
        return ((entries & MAPPED) != 0) & ((entries & self.arch.dtype.type(self.arch.pfn_mask)) != zero)

    def mapped_pages(self, entries: np.ndarray) -> np.ndarray:
        """Pfns of the counted pages that `entries` map."""
        return self.pfns_of(entries[self.counted_pages(entries)])

    def table_runs(self, pfns: np.ndarray):
        """The tables in frames `pfns` as views of physical memory, run by run of consecutive
        frames (page tables are allocated side by side), GATHER_TABLES at most at a time."""
        pfns = np.sort(pfns)
        starts = [0, *(np.flatnonzero(pfns[1:] != pfns[:-1] + 1) + 1).tolist()]
        pfns = pfns.tolist()
        for start, end in zip(starts, starts[1:] + [len(pfns)]):
            for i in range(start, end, GATHER_TABLES):
                yield self.phys.tables[pfns[i] : pfns[min(i + GATHER_TABLES, end) - 1] + 1]

    def clear_counting(self, block: np.ndarray, bit: int) -> int:
        """Clear `bit` in every entry of a block of tables; return how many entries had it set.

        The count is the drop in the block's sum (modulo 2**bits, where the sums wrap) over
        the bit's value: two summing passes, the second over memory the clear has just brought
        into the cache, cost less than testing each entry into a temporary.
        """
        modulus = 1 << (8 * self.arch.entry_bytes)
        before = int(block.sum(dtype=block.dtype))
        np.bitwise_and(block, self.arch.clear_bits(bit), out=block)
        return (before - int(block.sum(dtype=block.dtype))) % modulus // bit

    # -- tables ----------------------------------------------------------------------------

    def alloc_table(self, mm: MM, level: int, addr: int, func: str) -> int:
        pfn = self.mem_map.alloc_one(PG_PGTABLE)
        mm.pgtables_bytes += self.arch.page_size
        self.tracer.count("tables_allocated")
        self.tracer.emit(func, "alloc_table", pid=mm.owner, addr=addr, level=level, table=pfn)
        return pfn

    def pmd_slot(self, mm: MM, addr: int, alloc: bool = False, func: str = "") -> tuple[int, int] | None:
        """The (table, index) of the entry that points at `addr`'s last-level table.

        Missing upper tables are allocated when `alloc` (pud_alloc, pmd_alloc), else None is
        returned. Policies here share last-level tables only, so an upper table is never
        shared and installing a table below it never needs an unshare first (sharing rule 19).
        """
        arch, table = self.arch, mm.pgd
        for level in range(arch.levels - 2):
            index = arch.index(level, addr)
            entry = self.entry(table, index)
            if not entry & _PAGE_PRESENT:
                if not alloc:
                    return None
                new = self.alloc_table(mm, level + 1, addr, func)
                self.set_entry(table, index, arch.mk_entry(new, _PAGE_TABLE))
                entry = self.entry(table, index)
            table = self.entry_pfn(entry)
        return table, arch.index(arch.levels - 2, addr)

    def slot_table(self, slot: tuple[int, int] | None) -> int | None:
        """The last-level table an upper entry points at, or None."""
        if slot is None:
            return None
        entry = self.entry(*slot)
        return self.entry_pfn(entry) if entry & _PAGE_PRESENT else None

    def pte_alloc(self, mm: MM, slot: tuple[int, int], addr: int, func: str) -> int:
        table = self.alloc_table(mm, self.arch.levels - 1, addr, func)
        self.set_entry(*slot, self.arch.mk_entry(table, _PAGE_TABLE))
        return table

    def leaf_slots(self, mm: MM, start: int, end: int):
        """Yield (pmd table, first index, last index + 1, base) for each run of upper entries
        that point at last-level tables covering [start, end), present or not, walking only
        existing upper tables. Entry i of the run maps from `base + i * arch.pte_span`."""
        arch = self.arch

        def walk(table: int, level: int, base: int):
            lo = max(start, base)
            hi = min(end, base + arch.span(level))
            first, last = arch.index(level, lo), arch.index(level, hi - 1)
            if level == arch.levels - 2:
                yield table, first, last + 1, base
                return
            for index in range(first, last + 1):
                entry = self.entry(table, index)
                if entry & _PAGE_PRESENT:
                    yield from walk(self.entry_pfn(entry), level + 1, base + (index << arch.shift(level)))

        if start < end:
            yield from walk(mm.pgd, 0, 0)

    def get_mm_counters(self, mm: MM) -> tuple[int, int]:
        """(rss, swap entries) of `mm`: the sums of the counts each last-level table it reaches
        keeps (MemMap.table_rss), so a shared table counts in every sharer, as if copied."""
        tables = [self.pfns_of(row[row & _PAGE_PRESENT != 0]) for row in
                  (self.phys.tables[pmd, first:last] for pmd, first, last, _ in self.leaf_slots(mm, 0, self.arch.task_size))]
        if not tables:
            return 0, 0
        tables = np.concatenate(tables)
        return int(self.mem_map.table_rss[tables].sum()), int(self.mem_map.table_swapents[tables].sum())

    def follow_pte(self, mm: MM, addr: int) -> int:
        """The entry mapping `addr`, read without side effects (0 if there is none)."""
        table = self.slot_table(self.pmd_slot(mm, addr))
        return 0 if table is None else self.entry(table, self.arch.index(self.arch.levels - 1, addr))

    # -- the TLB ---------------------------------------------------------------------------

    def flush_tlb_range(self, mm: MM, start: int, end: int, site: str) -> None:
        if site in self.skip_tlb_flush:
            self.tracer.emit(site, "skip_tlb_flush", pid=mm.owner, addr=start)
            return
        shift = self.arch.page_shift
        first, last = start >> shift, (end + (1 << shift) - 1) >> shift
        self.tlb.flush_range(mm.pcid, first, last)
        self.tracer.count("tlb_flushes")
        self.tracer.emit(site, "flush_tlb", pid=mm.owner, addr=start, count=last - first)

    def flush_tlb_mm(self, mm: MM, site: str) -> None:
        if site in self.skip_tlb_flush:
            self.tracer.emit(site, "skip_tlb_flush", pid=mm.owner)
            return
        self.tlb.flush_pcid(mm.pcid)
        self.tracer.count("tlb_flushes")
        self.tracer.emit(site, "flush_tlb", pid=mm.owner)

    def flush_tlb_all(self, site: str) -> None:
        """Every address space's translations, on every CPU: what a kernel does when it cannot
        tell which mms reach what it changed."""
        if site in self.skip_tlb_flush:
            self.tracer.emit(site, "skip_tlb_flush")
            return
        self.tlb.flush_all()
        self.tracer.count("tlb_flushes")
        self.tracer.count("tlb_flushes_all")
        self.tracer.emit(site, "flush_tlb_all")

    # -- tasks and mms ---------------------------------------------------------------------

    def mm_alloc(self, owner: int) -> MM:
        pgd = self.mem_map.alloc_one(PG_PGTABLE)
        mm = MM(pgd=pgd, pcid=self._next_pcid, owner=owner)
        self._next_pcid += 1
        self.mms[mm.pcid] = mm
        return mm

    def new_pid(self, take: bool = True) -> int:
        """The next pid; `take=False` only looks at it (fork takes it once nothing can fail)."""
        pid = self._next_pid
        self._next_pid += take
        return pid

    # -- all or nothing ----------------------------------------------------------------------

    def tables_spanned(self, start: int, end: int) -> int:
        """How many tables below the root a range can need, at most, level by level."""
        arch = self.arch
        return sum(((end - 1) // arch.span(level)) - (start // arch.span(level)) + 1 for level in range(1, arch.levels))

    @contextmanager
    def transaction(self, mm: MM, start: int, end: int, frames_bound: int):
        """Run a kernel operation on `mm` in [start, end) all or nothing.

        `frames_bound` is the most frames the operation can allocate. With that many free it
        cannot run out and runs as is; otherwise the state it can touch is saved first, and
        an OutOfMemory puts it all back before it propagates: frame metadata, the tables of
        `mm` in the range, its VMAs, every mm's and task's counters, shmem page caches, swap,
        the kernel's counters and trace.
        The TLB entries of `mm` are flushed, which only costs the next accesses a walk.
        A test that injects a failure (`MemMap.fail_after`) makes every transaction save.
        """
        if self.mem_map.nr_free >= frames_bound and self.mem_map.fail_after is None:
            yield
            return
        saved = self._save(mm, start, end)
        try:
            yield
        except OutOfMemory:
            self._restore(mm, saved)
            raise

    def _save(self, mm: MM, start: int, end: int):
        """What `transaction` puts back if the call on [start, end) runs out.

        Of physical memory, every table of `mm` such a call can write: each upper table whose
        span meets the range, at every level (a fault installs a table below any of them, and
        free_pgtables clears their entries), and each last-level table they point at from the
        range (faults, zaps and mprotect rewrite its entries; an unshare copies it and, under
        upper_wp, write-protects it). A table shared with other mms is saved once, for all.
        Tables the call allocates need nothing: restoring the frame metadata frees and zeroes
        them. Nor do the frames it frees (freeing zeroes them): a call frees only once it has
        allocated all it will (a zap frees in tlb_finish_mmu, after its unshares; the put_page
        of a copy-on-write never drops the last reference), so no rollback revives a frame.
        """
        arch, tables = self.arch, self.phys.tables
        pfns, level_tables = [mm.pgd], [(mm.pgd, 0)]  # (table, the address it maps from)
        for level in range(arch.levels - 1):
            below = []
            for table, base in level_tables:
                first = arch.index(level, max(start, base))
                row = tables[table, first : arch.index(level, min(end, base + arch.span(level)) - 1) + 1]
                present = np.flatnonzero(row & _PAGE_PRESENT)
                bases = base + ((present + first) << arch.shift(level))
                below += zip(self.pfns_of(row[present]).tolist(), bases.tolist())
            pfns += [table for table, _ in below]
            level_tables = below
        pfns = np.array(pfns, dtype=np.int64)
        shmems = {id(v.shmem): v.shmem for t in self.tasks.values() if t.mm for v in t.mm.vmas if v.shmem}
        return dict(
            mem_map=self.mem_map.snapshot(),
            tables=(pfns, tables[pfns].copy()),
            mms=[(m, m.pgtables_bytes) for m in self.mms.values()],
            vmas=[copy.copy(v) for v in mm.vmas],
            swap=self.swap.snapshot(),
            shmem=[(s, dict(s.pages), s.nr_vmas) for s in shmems.values()],
            tasks=[(t, t.minflt, t.majflt) for t in self.tasks.values()],
            counters=self.tracer.counters.copy(),
            events=self.tracer.mark(),
            next=(self._next_pcid, self._next_shmem, dict(self.mms)),
        )

    def _restore(self, mm: MM, saved) -> None:
        self.mem_map.restore(saved["mem_map"])
        pfns, rows = saved["tables"]
        self.phys.tables[pfns] = rows
        for m, pgtables_bytes in saved["mms"]:
            m.pgtables_bytes = pgtables_bytes
        mm.vmas = saved["vmas"]
        self.swap.restore(saved["swap"])
        for shmem, pages, nr_vmas in saved["shmem"]:
            shmem.pages, shmem.nr_vmas = pages, nr_vmas
        for task, minflt, majflt in saved["tasks"]:
            task.minflt, task.majflt = minflt, majflt
        self.tracer.counters = saved["counters"]
        self.tracer.rollback(saved["events"])
        self._next_pcid, self._next_shmem, self.mms = saved["next"]
        self.tlb.flush_pcid(mm.pcid)
