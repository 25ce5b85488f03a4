"""Reclaim (Linux's mm/vmscan.c): paging an anonymous page out, as 2.4's swap_out scan did.

The page's contents go to a slot of swap space (swap.py), and its entry becomes a swap entry.

2.4 reclaimed memory by walking each mm's page tables (swap_out -> try_to_swap_out). Through
a shared table that walk changes what every sharer maps, though it reached the table through
one mm: every sharer's TLB must be flushed (sharing rule 14). Nothing in the kernel lists the
mms that reach a table, so Phillips' revised patch of 22 Feb 2002
(<E16e8Gf-0005HN-00@starship.berlin>) flushes every TLB, flush_tlb_all, whenever the table's
count is above 1; ptsim does the same and counts those flushes (`tlb_flushes_all`). The
checker, which does search every mm, catches a sharer left with a stale entry.

Not modelled: the swap cache. A page mapped by more than one entry is not paged out, and
two entries holding one slot each read it back into a page of their own.
"""

from __future__ import annotations

import numpy as np

from ..hardware.arch import PFN_SHIFT, _PAGE_PRESENT
from .core import Kernel
from .memory import put_pages
from .mm import MM
from .page import PG_ANON


def try_to_swap_out(k: Kernel, mm: MM, addr: int) -> bool:
    """Page out the anonymous page `mm` maps at `addr`, if only one entry maps it."""
    arch = k.arch
    table = k.slot_table(k.pmd_slot(mm, addr))
    vma = mm.find_vma(addr)
    if table is None or vma is None or vma.shared:
        return False
    index = arch.index(arch.levels - 1, addr)
    pte = k.entry(table, index)
    pfn = k.entry_pfn(pte)
    mem_map = k.mem_map
    if not pte & _PAGE_PRESENT or mem_map.kind[pfn] != PG_ANON or mem_map.refcount[pfn] != 1:
        return False
    swap_slot = k.swap.store(k.phys.frame_bytes(pfn).tobytes())
    k.set_entry(table, index, swap_slot << PFN_SHIFT)
    mem_map.table_rss[table] -= 1
    mem_map.table_swapents[table] += 1
    page_addr = addr & ~(arch.page_size - 1)
    if mem_map.refcount[table] > 1:  # other mms reach this entry, and none can say which
        k.flush_tlb_all("try_to_swap_out")
    else:
        k.flush_tlb_range(mm, page_addr, page_addr + arch.page_size, "try_to_swap_out")
    put_pages(k, np.array([pfn]))  # after the flushes: no TLB may reach the freed page
    k.tracer.count("pages_swapped_out")
    k.tracer.emit("try_to_swap_out", "swap_out_page", pid=mm.owner, addr=page_addr, table=table, frame=pfn,
                  count=int(mem_map.refcount[table]), detail={"slot": swap_slot})
    return True
