"""Page faults, zapping and protection changes: Linux's mm/memory.c and mm/mprotect.c.

Each function carries the name of the Linux function that does the same job. Where a fork
policy changes the algorithm it is asked through `k.policy`: Phillips' changes to
`zap_page_range` and `handle_mm_fault` are the policy's `zap_pte_table` and
`prepare_pte_write`; everything else here is common to every policy.
"""

from __future__ import annotations

import numpy as np

from ..errors import SegmentationFault
from ..hardware import PageFault
from ..hardware.arch import _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_RW, _PAGE_USER
from .core import MAPPED, Kernel, Task
from .mm import MM, VMA
from .page import PG_ANON, PG_SHMEM, ZERO_PFN

# What a freshly faulted entry carries (Linux maps pages young, and dirty when written).
_PAGE_NEW = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED


def access_error(vma: VMA | None, write: bool) -> str | None:
    """Why the mappings forbid this access (arch/x86/mm/fault.c: access_error), or None."""
    if vma is None:
        return "no mapping at this address"
    if write and not vma.writable:
        return "write to a mapping without PROT_WRITE"
    if not write and not vma.readable:
        return "read of a PROT_NONE mapping"
    return None


def do_user_addr_fault(k: Kernel, task: Task, fault: PageFault) -> None:
    """The page-fault handler: find the VMA, check the access, let handle_mm_fault resolve it."""
    mm = task.mm
    vma = mm.find_vma(fault.cr2)
    reason = access_error(vma, fault.write)
    if reason is not None:
        raise SegmentationFault(fault.cr2, reason)
    if handle_mm_fault(k, mm, vma, fault.cr2, fault.write):
        task.majflt += 1
    else:
        task.minflt += 1


def handle_mm_fault(k: Kernel, mm: MM, vma: VMA, addr: int, write: bool) -> bool:
    """Resolve a fault the VMA allows; True if it was a major fault (it read swap)."""
    arch = k.arch
    slot = k.pmd_slot(mm, addr, alloc=True, func="handle_mm_fault")
    index = arch.index(arch.levels - 1, addr)
    table = k.slot_table(slot)
    upper = k.entry(*slot)
    if table is None:
        table = k.pte_alloc(mm, slot, addr, "handle_mm_fault")
    else:
        pte = k.entry(table, index)
        if write and not (pte & _PAGE_RW and upper & _PAGE_RW):  # RW is ANDed over the levels
            # This write fills or changes the entry, or the table's upper entry forbids it:
            # either way the table must be this mm's own.
            table = k.policy.prepare_pte_write(k, mm, slot, addr, "handle_mm_fault")
        elif not pte & _PAGE_PRESENT:
            # A read fills the entry: the policy says whether into the table as it is.
            table = k.policy.prepare_pte_fill(k, mm, vma, slot, addr, "handle_mm_fault")
    return handle_pte_fault(k, mm, vma, table, index, addr, write, upper_changed=k.entry(*slot) != upper)


def handle_pte_fault(k: Kernel, mm: MM, vma: VMA, table: int, index: int, addr: int, write: bool, upper_changed: bool) -> bool:
    pte = k.entry(table, index)
    if pte and not pte & MAPPED:
        do_swap_page(k, mm, vma, table, index, addr, write, pte)
        return True
    if not pte & _PAGE_PRESENT:
        if vma.shared:
            if not write:  # Linux's do_read_fault
                do_fault_around(k, mm, vma, table, index, addr)
            do_shared_fault(k, mm, vma, table, index, addr, write)
        else:
            do_anonymous_page(k, mm, vma, table, index, addr, write)
    elif write and not pte & _PAGE_RW:
        # MAP_SHARED entries are writable whenever their VMA is (do_shared_fault,
        # change_protection), so only private memory comes here: copy-on-write.
        assert not vma.shared
        do_wp_page(k, mm, vma, table, index, addr, pte)
    elif upper_changed:
        # Only the upper entry forbade the access; unsharing or reusing the table fixed it.
        k.tracer.count("fault_upper_wp")
    else:
        # The entry already allows the access: a stale TLB entry faulted. The fault dropped it.
        k.tracer.count("fault_spurious")
        k.tracer.emit("handle_pte_fault", "spurious", pid=mm.owner, addr=addr, table=table)
    return False


def do_anonymous_page(k: Kernel, mm: MM, vma: VMA, table: int, index: int, addr: int, write: bool) -> None:
    """First touch of a private page: the zero page for a read, a new zeroed page for a write."""
    if not write:
        k.set_entry(table, index, k.arch.mk_entry(ZERO_PFN, _PAGE_NEW))
        k.tracer.count("fault_zero")
        k.tracer.emit("do_anonymous_page", "map_zero_page", pid=mm.owner, addr=addr, table=table, frame=ZERO_PFN)
        return
    vma.anon_vma = True  # anon_vma_prepare
    pfn = new_anon_page(k)
    k.set_entry(table, index, k.arch.mk_entry(pfn, _PAGE_NEW | _PAGE_RW | _PAGE_DIRTY))
    k.mem_map.table_rss[table] += 1
    k.tracer.count("fault_anon")
    k.tracer.emit("do_anonymous_page", "map_new_page", pid=mm.owner, addr=addr, table=table, frame=pfn)


def new_anon_page(k: Kernel) -> int:
    pfn = k.mem_map.alloc_one(PG_ANON)
    k.mem_map.mapcount[pfn] = 1
    k.mem_map.anon_exclusive[pfn] = True
    k.tracer.count("pages_allocated")
    return pfn


def do_wp_page(k: Kernel, mm: MM, vma: VMA, table: int, index: int, addr: int, pte: int) -> None:
    """Write to a read-only private page: reuse it if nobody else maps it, else copy it."""
    mem_map, old = k.mem_map, k.entry_pfn(pte)
    if old != ZERO_PFN and (mem_map.anon_exclusive[old] or mem_map.refcount[old] == 1):
        # wp_page_reuse: still one fault, but no copy (sharing rule 16).
        mem_map.anon_exclusive[old] = True
        k.set_entry(table, index, pte | _PAGE_RW | _PAGE_DIRTY | _PAGE_ACCESSED)
        k.tracer.count("fault_wp_reuse")
        k.tracer.count("pages_reused")
        k.tracer.emit("do_wp_page", "reuse_page", pid=mm.owner, addr=addr, table=table, frame=old)
        return
    # wp_page_copy
    vma.anon_vma = True
    new = new_anon_page(k)
    if old != ZERO_PFN:
        k.phys.frame_bytes(new)[:] = k.phys.frame_bytes(old)
        k.tracer.count("pages_copied")
    else:
        k.mem_map.table_rss[table] += 1  # the zero page was not counted; its replacement is
    k.tracer.count("fault_wp_copy")
    k.set_entry(table, index, k.arch.mk_entry(new, _PAGE_NEW | _PAGE_RW | _PAGE_DIRTY))
    k.tracer.emit("do_wp_page", "copy_page", pid=mm.owner, addr=addr, table=table, frame=new, detail={"from": old})
    k.flush_tlb_range(mm, addr, addr + 1, "do_wp_page")  # ptep_clear_flush, before the old page can go
    if old != ZERO_PFN:
        put_pages(k, np.array([old]))


def do_swap_page(k: Kernel, mm: MM, vma: VMA, table: int, index: int, addr: int, write: bool, pte: int) -> None:
    """Read a swapped-out page back into a new page (a major fault).

    As Linux 6.x does, a page nobody else can reach is mapped writable when its VMA is, even
    on a read, so that the next write costs no fault. It is exclusive when this entry was the
    only one holding the swap slot, and the entry lies in a table of this mm's own: a read
    fault may fill a shared table (SharedPolicy.prepare_pte_fill), and there the page is
    reached by every sharer (sharing rule 2).
    """
    mem_map, swap_slot = k.mem_map, k.entry_pfn(pte)
    exclusive = k.swap.count[swap_slot] == 1 and mem_map.refcount[table] == 1
    pfn = new_anon_page(k)
    mem_map.anon_exclusive[pfn] = exclusive
    k.phys.frame_bytes(pfn)[:] = np.frombuffer(k.swap.data[swap_slot], dtype=np.uint8)
    k.swap.put([swap_slot])
    flags = _PAGE_NEW
    if write or (exclusive and vma.writable):
        flags |= _PAGE_RW | (_PAGE_DIRTY if write else 0)
    k.set_entry(table, index, k.arch.mk_entry(pfn, flags))
    mem_map.table_rss[table] += 1
    mem_map.table_swapents[table] -= 1
    k.tracer.count("fault_swapin")
    k.tracer.emit("do_swap_page", "swap_in_page", pid=mm.owner, addr=addr, table=table, frame=pfn, detail={"slot": swap_slot})


def do_shared_fault(k: Kernel, mm: MM, vma: VMA, table: int, index: int, addr: int, write: bool) -> None:
    """Map a MAP_SHARED page from its shmem object, creating it on first use.

    The entry is writable whenever the mapping is, even for a read: shmem needs no write
    notification, so Linux's vm_page_prot for a shared writable mapping carries RW.
    """
    shmem, pgoff = vma.shmem, vma.pgoff_of(addr, k.arch.page_shift)
    pfn = shmem.pages.get(pgoff)
    if pfn is None:
        pfn = k.mem_map.alloc_one(PG_SHMEM)  # its one reference is the page-cache slot
        shmem.pages[pgoff] = pfn
        k.tracer.count("pages_allocated")
    k.mem_map.refcount[pfn] += 1
    k.mem_map.mapcount[pfn] += 1
    flags = _PAGE_NEW | (_PAGE_RW if vma.writable else 0) | (_PAGE_DIRTY if write else 0)
    k.set_entry(table, index, k.arch.mk_entry(pfn, flags))
    k.mem_map.table_rss[table] += 1
    k.tracer.count("fault_shmem")
    k.tracer.emit("do_shared_fault", "map_shmem_page", pid=mm.owner, addr=addr, table=table, frame=pfn)


def do_fault_around(k: Kernel, mm: MM, vma: VMA, table: int, index: int, addr: int) -> None:
    """Before a read fault maps its MAP_SHARED page, map the pages of the shmem object already
    in memory around it into the empty entries: a block of k.fault_around_bytes aligned to its
    size, clamped to the VMA and to this table (mm/memory.c do_fault_around, filemap_map_pages).
    They cost no fault: a later access to them finds them mapped.
    """
    arch = k.arch
    nr = min(1 << max(k.fault_around_bytes.bit_length() - 1 - arch.page_shift, 0), arch.entries)
    if nr == 1:
        return
    vma_off = (addr - vma.start) >> arch.page_shift
    first = max(index - index % nr, index - min(index, vma_off))
    last = min(first + nr, arch.entries, index + ((vma.end - vma.start) >> arch.page_shift) - vma_off)
    pgoff, row, mapped = vma.pgoff_of(addr, arch.page_shift), k.phys.tables[table], 0
    flags = _PAGE_NEW | (_PAGE_RW if vma.writable else 0)
    for i in range(first, last):
        pfn = vma.shmem.pages.get(pgoff + i - index)
        if i == index or pfn is None or row[i]:
            continue
        k.mem_map.refcount[pfn] += 1
        k.mem_map.mapcount[pfn] += 1
        row[i] = k.arch.mk_entry(pfn, flags)
        mapped += 1
    k.mem_map.table_rss[table] += mapped
    if mapped:
        k.tracer.emit("do_fault_around", "map_pages", pid=mm.owner, addr=addr, table=table, count=mapped)


def put_pages(k: Kernel, pfns: np.ndarray) -> None:
    """Drop one mapping of each page (page_remove_rmap + put_page); free pages left unused."""
    mem_map = k.mem_map
    np.subtract.at(mem_map.mapcount, pfns, 1)
    np.subtract.at(mem_map.refcount, pfns, 1)
    dead = np.unique(pfns[mem_map.refcount[pfns] == 0])
    if len(dead):
        mem_map.free(dead)
        k.tracer.count("pages_freed", len(dead))


# -- zap ---------------------------------------------------------------------------------


class MMUGather:
    """Pages and tables unmapped by a zap, freed only after the TLB flush (mmu_gather)."""

    def __init__(self):
        self.pages: list[np.ndarray] = []
        self.tables: list[int] = []


def zap_pte_range(k: Kernel, mm: MM, table: int, first: int, last: int, tlb: MMUGather, func: str, addr: int) -> None:
    """Clear entries [first, last) of a table this mm owns alone, gathering their pages."""
    entries = k.phys.tables[table, first:last]
    pages = k.mapped_pages(entries)
    slots = k.swap_slots(entries)
    k.swap.put(slots)
    k.mem_map.table_rss[table] -= len(pages)
    k.mem_map.table_swapents[table] -= len(slots)
    cleared = int(np.count_nonzero(entries))
    entries[:] = 0
    if len(pages):
        tlb.pages.append(pages)
    k.tracer.emit(func, "zap_ptes", pid=mm.owner, addr=addr, table=table, count=cleared)


def zap_page_range(k: Kernel, mm: MM, start: int, end: int, func: str) -> MMUGather:
    """Unmap [start, end) from mm's tables; the caller flushes and frees with tlb_finish_mmu.

    A table wholly inside the range, or one no VMA of this mm will use any more, is `whole`:
    the sharing policy may then drop its reference without touching the table.
    """
    arch, tlb = k.arch, MMUGather()
    span = arch.pte_span
    for pmd, first, last, pmd_base in list(k.leaf_slots(mm, start, end)):
        for index in range(first, last):
            table = k.slot_table((pmd, index))
            if table is None:
                continue
            base = pmd_base + index * span
            lo, hi = max(start, base), min(end, base + span)
            whole = (lo == base and hi == base + span) or not mm.vmas_in(base, base + span)
            k.policy.zap_pte_table(k, mm, (pmd, index), table, base, lo, hi, whole, tlb, func)
    return tlb


def tlb_finish_mmu(k: Kernel, mm: MM, start: int, end: int, tlb: MMUGather, func: str) -> None:
    """Flush, then free what the zap gathered: no TLB may reach a freed page or table."""
    k.flush_tlb_range(mm, start, end, func)
    if tlb.pages:
        put_pages(k, np.concatenate(tlb.pages))
    if tlb.tables:
        k.mem_map.free(tlb.tables)
        k.tracer.count("tables_freed", len(tlb.tables))


def free_pgtables(k: Kernel, mm: MM, start: int, end: int, tlb: MMUGather) -> None:
    """Unhook and gather every table around [start, end) that no VMA of mm reaches any more."""
    arch = k.arch

    def free_subtree(table: int, level: int) -> None:
        if level < arch.levels - 1:
            for index in np.flatnonzero(k.phys.tables[table] & _PAGE_PRESENT):
                free_subtree(k.entry_pfn(k.entry(table, int(index))), level + 1)
        else:
            assert k.mem_map.refcount[table] == 1 and not k.phys.tables[table].any(), "zap first"
        tlb.tables.append(table)
        mm.pgtables_bytes -= arch.page_size
        k.tracer.emit("free_pgtables", "free_table", pid=mm.owner, level=level, table=table)

    def walk(table: int, level: int, base: int) -> None:
        lo, hi = max(start, base), min(end, base + arch.span(level))
        for index in range(arch.index(level, lo), arch.index(level, hi - 1) + 1):
            entry = k.entry(table, index)
            if not entry & _PAGE_PRESENT:
                continue
            child, child_base = k.entry_pfn(entry), base + (index << arch.shift(level))
            if mm.vmas_in(child_base, child_base + (1 << arch.shift(level))):
                if level + 1 < arch.levels - 1:
                    walk(child, level + 1, child_base)
                continue
            free_subtree(child, level + 1)
            k.set_entry(table, index, 0)

    if start < end:
        walk(mm.pgd, 0, 0)


def unmap_region(k: Kernel, mm: MM, start: int, end: int, func: str) -> None:
    """Zap [start, end) and free the tables nobody needs, once the range has no VMAs."""
    tlb = zap_page_range(k, mm, start, end, func)
    free_pgtables(k, mm, start, end, tlb)
    tlb_finish_mmu(k, mm, start, end, tlb, func)


def release_vma(k: Kernel, vma: VMA) -> None:
    """A VMA is gone: a shmem file mapped by no VMA any more gives its pages back."""
    shmem = vma.shmem
    if shmem is None:
        return
    shmem.nr_vmas -= 1
    if shmem.nr_vmas == 0 and shmem.pages:
        pfns = np.fromiter(shmem.pages.values(), dtype=np.int64)
        assert not k.mem_map.mapcount[pfns].any()
        k.mem_map.refcount[pfns] -= 1
        k.mem_map.free(pfns)
        k.tracer.count("pages_freed", len(pfns))
        shmem.pages.clear()


def exit_mmap(k: Kernel, mm: MM) -> None:
    vmas, mm.vmas = mm.vmas, []
    unmap_region(k, mm, 0, k.arch.task_size, "exit_mmap")
    for vma in vmas:
        release_vma(k, vma)
    k.mem_map.free([mm.pgd])
    del k.mms[mm.pcid]


def unshare_pte_tables(k: Kernel, mm: MM, start: int, end: int, func: str) -> None:
    """Make each shared last-level table that maps part of [start, end) this mm's own, before
    the mm's VMAs there change (sharing rule 11). Sharers must agree on the VMAs a table
    serves: a read fault fills a shared table for all of them (SharedPolicy.prepare_pte_fill),
    and an entry filled for one sharer's new mapping would appear in the others' memory."""
    span = k.arch.pte_span
    for pmd, first, last, pmd_base in list(k.leaf_slots(mm, start, end)):
        for index in range(first, last):
            table = k.slot_table((pmd, index))
            if table is not None and k.mem_map.refcount[table] > 1:
                k.policy.prepare_pte_write(k, mm, (pmd, index), max(start, pmd_base + index * span), func)


def change_protection(k: Kernel, mm: MM, vma: VMA, start: int, end: int) -> None:
    """Rewrite the entries of [start, end), inside `vma`, for its new protection (mprotect)."""
    arch, page_shift = k.arch, k.arch.page_shift
    span = arch.pte_span
    for pmd, first, last, pmd_base in list(k.leaf_slots(mm, start, end)):
        for index in range(first, last):
            table = k.slot_table((pmd, index))
            base = pmd_base + index * span
            lo, hi = max(start, base), min(end, base + span)
            a, b = (lo - base) >> page_shift, ((hi - base - 1) >> page_shift) + 1
            if table is None or (k.mem_map.refcount[table] == 1 and not (k.phys.tables[table, a:b] & MAPPED).any()):
                continue  # a shared table is unshared even when empty here: see unshare_pte_tables
            table = k.policy.prepare_pte_write(k, mm, (pmd, index), lo, "change_protection")
            entries = k.phys.tables[table, a:b]
            mapped = (entries & MAPPED) != 0
            old = entries[mapped]
            cleared = old & arch.clear_bits(_PAGE_PRESENT | _PAGE_PROTNONE | _PAGE_RW)
            if vma.prot == "":
                new = cleared | _PAGE_PROTNONE
            elif vma.prot == "r":
                new = cleared | _PAGE_PRESENT
            else:
                pfns = k.pfns_of(old)
                writable = np.full(len(old), True) if vma.shared else k.mem_map.anon_exclusive[pfns] & (pfns != ZERO_PFN)
                new = cleared | _PAGE_PRESENT | np.where(writable, _PAGE_RW, 0).astype(entries.dtype)
            entries[mapped] = new
            k.tracer.emit("change_protection", "change_ptes", pid=mm.owner, addr=lo, table=table, count=len(old))
    k.flush_tlb_range(mm, start, end, "change_protection")
