"""fork: dup_mmap, copy_page_range, and the fork policies.

`CopyPolicy` is classic fork: every last-level table is copied entry by entry, and private
writable entries are write-protected in parent and child for copy-on-write.

`SharedPolicy` is Daniel Phillips' 2002 design: his three changes, one for each function his
patch changed, in five methods of `CopyPolicy` (`prepare_pte_fill` is the third change's read
fault, and `vma_needs_copy`, every VMA's tables shared, a one-line consequence of the first):

1. `copy_pte_tables` (in copy_page_range): point the child's upper entry at the parent's table
   and raise its use count, and write-protect the table's private writable entries, so that
   nobody can write a data page through it. When is a switch, `wrprotect`:
   "first_share" (the default) only when the count goes 1 -> 2, as Phillips proposed on
   29 Jan 2002 (<E16VNLG-0000En-00@starship.berlin>); "every_fork" at every fork that shares
   the table, whatever its count, as his patch of 16 and 22 Feb 2002 does
   (<E16c9FS-0004In-00@starship.berlin>, <E16e8Gf-0005HN-00@starship.berlin>). The entries
   end the same either way (a shared table's private entries are already read-only); the
   patch pays a pass over every shared table at every fork.
2. `zap_pte_table` (in zap_page_range): a shared table the zap covers whole only loses a use
   count; a shared table covered in part is unshared first.
3. `prepare_pte_write` (in handle_mm_fault, and before any other change to an entry): a
   shared table is unshared: copy it, entries and all, into a table of this mm's own, then
   drop one use count of the old. The last sharer, count 1, keeps the table as it is.
   A read fault that fills an empty entry asks `prepare_pte_fill`; a switch, `read_fault`:
   "fill" (the default) fills the shared table, where every sharer sees the new entry, as
   the patch of 16 and 18 Feb does (its handle_mm_fault calls `__pte_alloc(mm, pmd, address,
   write_access)`; <E16c9FS-0004In-00@starship.berlin>, <E16cm1k-0000Kq-00@starship.berlin>)
   and as Phillips defended on 19 Feb 2002 (<E16cxgg-0000xa-00@starship.berlin>); "unshare"
   unshares first, as Hugh Dickins proposed (18 Feb,
   <Pine.LNX.4.21.0202181759100.1248-100000@localhost.localdomain>: concurrent read faults
   could slot one page in twice, counting it double). The 22 Feb revision drops that change
   to handle_mm_fault, whose `pte_alloc` then unshares on every fault.

`UpperWrprotectPolicy` shares as Phillips does but write-protects a shared table through the
RW bit of each sharer's upper entry (McCracken 2002, ODF 2021): it overrides the upper entry
a sharer gets (`table_entry`), `wrprotect_for_sharing`, `prepare_pte_write`,
`prepare_pte_fill` and `unshare`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..hardware.arch import PFN_SHIFT, _PAGE_ACCESSED, _PAGE_PRESENT, _PAGE_RW, _PAGE_TABLE
from .core import MAPPED, Kernel
from .memory import MMUGather, zap_pte_range
from .mm import MM, VMA
from .page import PG_PGTABLE


def dup_mmap(k: Kernel, pid: int, parent: MM) -> MM:
    """The child's mm: a copy of every VMA, and page tables as the policy makes them."""
    frames_bound = 1 + parent.pgtables_bytes // k.arch.page_size  # never more tables than the parent's
    with k.transaction(parent, 0, k.arch.task_size, frames_bound):
        child = k.mm_alloc(pid)
        for vma in parent.vmas:
            # anon_vma_fork: the child's anon_vma chain links the parent's
            twin = dataclasses.replace(vma, anon_vma_forked=vma.anon_vma)
            if vma.shmem is not None:
                vma.shmem.nr_vmas += 1
            child.vmas.append(twin)
            if k.policy.vma_needs_copy(vma):
                copy_page_range(k, child, parent, vma)
        k.flush_tlb_mm(parent, "dup_mmap")  # the parent's entries may have been write-protected
    return child


def copy_page_range(k: Kernel, dst: MM, src: MM, vma: VMA) -> None:
    """Give `dst` the translations `src` has in `vma`, table by last-level table."""
    span = k.arch.pte_span
    for src_pmd, first, last, pmd_base in list(k.leaf_slots(src, vma.start, vma.end)):
        present = np.flatnonzero(k.phys.tables[src_pmd, first:last] & _PAGE_PRESENT) + first
        if len(present) == 0:
            continue
        dst_pmd, _ = k.pmd_slot(dst, pmd_base + int(present[0]) * span, alloc=True, func="copy_page_range")
        k.policy.copy_pte_tables(k, dst, src, vma, dst_pmd, src_pmd, present, pmd_base)


def whole_tables(k: Kernel, vma: VMA, bases: np.ndarray) -> np.ndarray:
    """For each last-level table mapping from one of `bases`, whether it lies whole in `vma`."""
    return (bases >= vma.start) & (bases + k.arch.pte_span <= vma.end)


def entry_range(k: Kernel, vma: VMA, base: int) -> tuple[int, int]:
    """Entries [a, b) of the table mapping from `base` that lie inside `vma`."""
    shift, span = k.arch.page_shift, k.arch.pte_span
    return (max(vma.start, base) - base) >> shift, (min(vma.end, base + span) - base) >> shift


class CopyPolicy:
    name = "copy"

    def vma_needs_copy(self, vma: VMA) -> bool:
        # Linux copies no entries for a VMA without anonymous pages: MAP_SHARED pages and the
        # zero page can be faulted in again by the child.
        return vma.anon_vma

    def copy_pte_tables(self, k, dst: MM, src: MM, vma: VMA, dst_pmd: int, src_pmd: int, indexes, pmd_base: int):
        tables, page_size = k.phys.tables, k.arch.page_size
        missing = indexes[(tables[dst_pmd, indexes] & _PAGE_PRESENT) == 0]
        if len(missing):  # a table holding two VMAs is already there for the second
            new = k.mem_map.alloc(len(missing), PG_PGTABLE)
            tables[dst_pmd, missing] = (new.astype(tables.dtype) << PFN_SHIFT) | _PAGE_TABLE
            dst.pgtables_bytes += len(missing) * page_size
            k.tracer.count("tables_allocated", len(missing))
        src_tables = k.pfns_of(tables[src_pmd, indexes])
        dst_tables = k.pfns_of(tables[dst_pmd, indexes])
        bases = pmd_base + indexes * k.arch.pte_span
        whole = whole_tables(k, vma, bases)
        if whole.any():
            copy_pte_range(k, dst, vma, src_tables[whole], dst_tables[whole], 0, k.arch.entries)
        for i in np.flatnonzero(~whole):
            a, b = entry_range(k, vma, int(bases[i]))
            copy_pte_range(k, dst, vma, src_tables[i : i + 1], dst_tables[i : i + 1], a, b)
        if k.tracer.events is not None:
            for s, d, base in zip(src_tables, dst_tables, bases):
                k.tracer.emit("copy_page_range", "copy_table", pid=dst.owner, addr=int(base), table=int(s), frame=int(d))

    def zap_pte_table(self, k, mm: MM, slot, table: int, base: int, lo: int, hi: int, whole: bool, tlb: MMUGather, func: str):
        shift = k.arch.page_shift
        zap_pte_range(k, mm, table, (lo - base) >> shift, ((hi - base - 1) >> shift) + 1, tlb, func, lo)

    def prepare_pte_write(self, k, mm: MM, slot, addr: int, func: str) -> int:
        return k.slot_table(slot)

    def prepare_pte_fill(self, k, mm: MM, vma: VMA, slot, addr: int, func: str) -> int:
        return k.slot_table(slot)


def copy_pte_range(k: Kernel, dst: MM, vma: VMA, src_tables, dst_tables, a: int, b: int) -> None:
    """Copy entries [a, b) of each source table into the matching destination table."""
    tables, mem_map = k.phys.tables, k.mem_map
    block = tables[src_tables, a:b]
    if not vma.shared:
        # Copy-on-write: nobody may write a page both processes map, so both lose RW.
        wrprotected = int(np.count_nonzero(block & _PAGE_RW))
        if wrprotected:
            block &= k.arch.clear_bits(_PAGE_RW)
            tables[src_tables, a:b] = block
            k.tracer.count("ptes_wrprotected", wrprotected)
    tables[dst_tables, a:b] = block & k.arch.clear_bits(_PAGE_ACCESSED)  # the child's entries start old
    counted = k.counted_pages(block)
    pages = k.pfns_of(block[counted])
    # A page is mapped at one address of one VMA, so `pages` holds each pfn once and the
    # buffered += counts exactly (np.add.at would too, at five times the cost).
    mem_map.refcount[pages] += 1
    mem_map.mapcount[pages] += 1
    mem_map.anon_exclusive[pages] = False
    mem_map.table_rss[dst_tables] += np.count_nonzero(counted, axis=1).astype(np.int32)
    swapped = k.swap_entries(block)
    k.swap.dup(k.pfns_of(block[swapped]))
    mem_map.table_swapents[dst_tables] += np.count_nonzero(swapped, axis=1).astype(np.int32)
    k.tracer.count("ptes_copied", int(np.count_nonzero(block & MAPPED)))


class SharedPolicy(CopyPolicy):
    name = "shared"
    table_entry = _PAGE_TABLE  # what a sharer's upper entry for a shared table carries
    READ_FAULTS = ("fill", "unshare")
    WRPROTECTS = ("first_share", "every_fork")

    def __init__(self, read_fault: str = "fill", wrprotect: str = "first_share", exclusive_at_fork: bool = False):
        """`read_fault` and `wrprotect`: see the module docstring. `exclusive_at_fork` makes a
        sharing fork clear PG_anon_exclusive of every page its shared tables map, keeping the
        flag's per-process meaning, as Linux's fork does page by page: it costs a pass over
        every entry, where by default the flag means one entry (page.py)."""
        if read_fault not in self.READ_FAULTS:
            raise ValueError(f"read_fault must be one of {self.READ_FAULTS}, not {read_fault!r}")
        if wrprotect not in self.WRPROTECTS:
            raise ValueError(f"wrprotect must be one of {self.WRPROTECTS}, not {wrprotect!r}")
        if not isinstance(exclusive_at_fork, bool):
            raise ValueError(f"exclusive_at_fork must be True or False, not {exclusive_at_fork!r}")
        self.read_fault, self.wrprotect, self.exclusive_at_fork = read_fault, wrprotect, exclusive_at_fork

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(read_fault={self.read_fault!r}, wrprotect={self.wrprotect!r}, "
                f"exclusive_at_fork={self.exclusive_at_fork!r})")

    def vma_needs_copy(self, vma: VMA) -> bool:
        # Sharing a table costs one use count whatever it maps: share them all (as 2.4 did).
        return True

    # Phillips' change 1: copy_page_range only raises use counts.
    def copy_pte_tables(self, k, dst: MM, src: MM, vma: VMA, dst_pmd: int, src_pmd: int, indexes, pmd_base: int):
        tables, mem_map = k.phys.tables, k.mem_map
        fresh = indexes[(tables[dst_pmd, indexes] & _PAGE_PRESENT) == 0]  # once per table per fork
        if len(fresh) == 0:
            return
        shared = k.pfns_of(tables[src_pmd, fresh])
        tables[dst_pmd, fresh] = (shared.astype(tables.dtype) << PFN_SHIFT) | self.table_entry
        mem_map.refcount[shared] += 1
        dst.pgtables_bytes += len(shared) * k.arch.page_size
        k.tracer.count("tables_shared", len(shared))
        bases = pmd_base + fresh * k.arch.pte_span
        protect = mem_map.refcount[shared] == 2 if self.wrprotect == "first_share" else np.full(len(shared), True)
        if protect.any():
            self.wrprotect_for_sharing(k, src, vma, src_pmd, fresh[protect], shared[protect], bases[protect])
        if self.exclusive_at_fork:
            for rows in k.table_runs(shared):
                mem_map.anon_exclusive[k.pfns_of(rows[k.counted_pages(rows)])] = False
        if k.tracer.events is not None:
            for t, base, wp in zip(shared.tolist(), bases.tolist(), protect.tolist()):
                k.tracer.emit("copy_page_range", "share_table", pid=dst.owner, addr=base, table=t, count=int(mem_map.refcount[t]))
                if wp:
                    k.tracer.emit("copy_page_range", "wrprotect_table", pid=src.owner, addr=base, table=t)

    def wrprotect_for_sharing(self, k, mm: MM, vma: VMA, pmd: int, indexes, shared, bases) -> None:
        """Clear RW on every private entry of these tables of `vma`, now shared (sharing rule 2).

        MAP_SHARED entries keep RW: their pages are meant to be written by every mapper.
        """
        whole = whole_tables(k, vma, bases)
        wrprotected = 0
        if not vma.shared:  # the usual case: tables that lie whole inside one private VMA
            for rows in k.table_runs(shared[whole]):
                wrprotected += k.clear_counting(rows, _PAGE_RW)
        for table, base in zip(shared[~whole].tolist(), bases[~whole].tolist()):  # VMAs' edges
            wrprotected += wrprotect_private_entries(k, mm, table, base)
        k.tracer.count("ptes_wrprotected", wrprotected)

    # Phillips' change 2: zap_page_range only drops a shared table's count.
    def zap_pte_table(self, k, mm: MM, slot, table: int, base: int, lo: int, hi: int, whole: bool, tlb: MMUGather, func: str):
        if k.mem_map.refcount[table] > 1:
            if whole:
                k.set_entry(*slot, 0)
                k.mem_map.refcount[table] -= 1
                mm.pgtables_bytes -= k.arch.page_size
                k.tracer.emit(func, "drop_shared_table", pid=mm.owner, addr=base, table=table, count=int(k.mem_map.refcount[table]))
                return
            table = self.unshare(k, mm, slot, lo, func)
        super().zap_pte_table(k, mm, slot, table, base, lo, hi, whole, tlb, func)

    # Phillips' change 3: before an entry of a shared table changes, make the table private.
    def prepare_pte_write(self, k, mm: MM, slot, addr: int, func: str) -> int:
        table = k.slot_table(slot)
        if k.mem_map.refcount[table] > 1:
            table = self.unshare(k, mm, slot, addr, func)
        return table

    def prepare_pte_fill(self, k, mm: MM, vma: VMA, slot, addr: int, func: str) -> int:
        table = k.slot_table(slot)
        if self.read_fault == "unshare":
            return self.prepare_pte_write(k, mm, slot, addr, func)
        if k.mem_map.refcount[table] > 1:
            k.tracer.emit(func, "fill_shared_table", pid=mm.owner, addr=addr, table=table, count=int(k.mem_map.refcount[table]))
        return table

    def unshare(self, k, mm: MM, slot, addr: int, func: str) -> int:
        """Do for this mm, for one table, the copying fork skipped (sharing rule 4)."""
        mem_map, tables = k.mem_map, k.phys.tables
        old = k.slot_table(slot)
        new = mem_map.alloc_one(PG_PGTABLE)
        tables[new] = tables[old]
        pages = k.mapped_pages(tables[new])
        mem_map.refcount[pages] += 1
        mem_map.mapcount[pages] += 1
        mem_map.anon_exclusive[pages] = False
        mem_map.table_rss[new], mem_map.table_swapents[new] = mem_map.table_rss[old], mem_map.table_swapents[old]
        k.swap.dup(k.swap_slots(tables[new]))
        k.set_entry(*slot, k.arch.mk_entry(new, _PAGE_TABLE))
        mem_map.refcount[old] -= 1
        base = addr & ~(k.arch.pte_span - 1)
        k.tracer.count("tables_allocated")
        k.tracer.count("tables_unshared")
        k.tracer.count("ptes_copied", int(np.count_nonzero(tables[new] & MAPPED)))
        k.tracer.emit(func, "unshare_table", pid=mm.owner, addr=base, table=old, frame=new, count=int(mem_map.refcount[old]))
        k.flush_tlb_range(mm, base, base + k.arch.pte_span, "unshare_pte_table")
        return new


class UpperWrprotectPolicy(SharedPolicy):
    """Sharing as Phillips does, write-protected as McCracken (2002) and ODF (2021) do: through
    the RW bit of every sharer's upper entry, so that fork touches no PTE at all.

    Unsharing then copies writable entries, so it write-protects the private ones in both
    tables; the last sharer takes its table back by setting RW in its upper entry again.
    """

    name = "upper_wp"
    table_entry = _PAGE_TABLE & ~_PAGE_RW

    def wrprotect_for_sharing(self, k, mm: MM, vma: VMA, pmd: int, indexes, shared, bases) -> None:
        k.phys.tables[pmd, indexes] &= k.arch.clear_bits(_PAGE_RW)

    def prepare_pte_write(self, k, mm: MM, slot, addr: int, func: str) -> int:
        table = super().prepare_pte_write(k, mm, slot, addr, func)
        entry = k.entry(*slot)
        if not entry & _PAGE_RW:  # the last sharer: its table is its own again
            k.set_entry(*slot, entry | _PAGE_RW)
            k.tracer.emit(func, "reuse_table", pid=mm.owner, addr=addr & ~(k.arch.pte_span - 1), table=table)
        return table

    def prepare_pte_fill(self, k, mm: MM, vma: VMA, slot, addr: int, func: str) -> int:
        """ODF copies a table whose upper entry is read-only on any fault in a writable VMA,
        read or write (rssys/on-demand-fork, branch paper-version-kernel-v5.6.19, mm/memory.c
        __handle_mm_fault); in a read-only VMA the read fills the shared table."""
        if vma.writable:
            return self.prepare_pte_write(k, mm, slot, addr, func)
        return super().prepare_pte_fill(k, mm, vma, slot, addr, func)

    def unshare(self, k, mm: MM, slot, addr: int, func: str) -> int:
        old = k.slot_table(slot)
        new = super().unshare(k, mm, slot, addr, func)
        base = addr & ~(k.arch.pte_span - 1)
        wrprotected = wrprotect_private_entries(k, mm, new, base)
        wrprotect_private_entries(k, mm, old, base)  # the same entries: the same pages
        k.tracer.count("ptes_wrprotected", wrprotected)
        return new


def wrprotect_private_entries(k: Kernel, mm: MM, table: int, base: int) -> int:
    """Clear RW on the entries of `table` (mapping from `base`) that lie in private VMAs;
    return how many were writable."""
    tables, clear_rw, wrprotected = k.phys.tables, k.arch.clear_bits(_PAGE_RW), 0
    for vma in mm.vmas_in(base, base + k.arch.pte_span):
        if not vma.shared:
            a, b = entry_range(k, vma, base)
            wrprotected += int(np.count_nonzero(tables[table, a:b] & _PAGE_RW))
            tables[table, a:b] &= clear_rw
    return wrprotected


POLICIES = {p.name: p for p in (CopyPolicy(), SharedPolicy(), UpperWrprotectPolicy())}
