"""The invariant checker: recount everything from physical memory and compare.

It trusts no counter the kernel keeps. It walks every live mm's tables from CR3 down, counts
who points at each table and which entries map each page, rebuilds every process's effective
mappings (permission ANDed over the levels), and then holds the kernel to:

- each table's refcount (use count) equals the upper entries pointing at it (sharing rule 1);
  a root equals one, its mm;
- each anonymous page's refcount and mapcount equal the entries mapping it; a shmem page has
  one more reference, its page-cache slot, and sits in exactly one shmem object;
- no frame is leaked: every allocated frame is reached, every free frame is zero and unused;
- no process can write a page that another (process, address) also maps, unless it is
  MAP_SHARED memory (rule 2): the zero page is never writable;
- every entry lies inside a VMA of every mm that reaches it, and asks no more than the VMA
  allows; a private VMA maps anonymous pages or the zero page, a shared one its shmem pages;
- each last-level table's table_rss and table_swapents equal the pages and swap entries it
  holds (other frames keep zero there), and each mm's VmRSS, VmSwap and pgtables_bytes equal
  what its tables hold; anon_exclusive pages have one mapping entry (the flag means one entry,
  page.py); each swap slot's count equals the swap entries holding it, all in private VMAs;
- every TLB entry agrees with the tables: same frame, and no write the tables forbid.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvariantError
from ..hardware.arch import _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_RW
from ..kernel.core import MAPPED, Kernel
from ..kernel.page import KIND_NAMES, PG_ANON, PG_FREE, PG_PGTABLE, PG_SHMEM, ZERO_PFN


def _fail(message: str):
    raise InvariantError(message)


def check(k: Kernel) -> None:
    arch, tables, mem_map = k.arch, k.phys.tables, k.mem_map
    n = k.phys.nframes
    table_refs = np.zeros(n, dtype=np.int64)
    entry_refs = np.zeros(n, dtype=np.int64)
    reached = np.zeros(n, dtype=bool)
    mappings = []  # per mm: (mm, vpns, pfns, writable)
    swap_refs: dict[int, int] = {}  # swap slot -> entries holding it, each table counted once

    live = [t.mm for t in k.tasks.values() if t.mm is not None]
    if sorted(mm.pcid for mm in live) != sorted(k.mms):
        _fail(f"mms known to the kernel {sorted(k.mms)} are not the live tasks' {sorted(mm.pcid for mm in live)}")
    for mm in live:
        table_refs[mm.pgd] += 1
        reached[mm.pgd] = True
        vpns, pfns, writable = [], [], []
        pgtables = rss = swapents = 0

        def walk(table: int, level: int, base: int, upper_rw: bool):
            nonlocal pgtables, rss, swapents
            row = tables[table]
            if level < arch.levels - 1:
                nonzero = np.flatnonzero(row)
                for index in nonzero:
                    entry = int(row[index])
                    child_base = base + (int(index) << arch.shift(level))
                    if not entry & _PAGE_PRESENT:
                        _fail(f"pid {mm.owner}: non-present upper entry {entry:#x} at level {level} for {child_base:#x}")
                    child = k.entry_pfn(entry)
                    if mem_map.kind[child] != PG_PGTABLE:
                        _fail(f"pid {mm.owner}: level-{level} entry for {child_base:#x} points at a {KIND_NAMES[mem_map.kind[child]]} frame {child}")
                    table_refs[child] += 1
                    pgtables += 1
                    reached[child] = True
                    walk(child, level + 1, child_base, upper_rw and bool(entry & _PAGE_RW))
                return
            # A last-level table: its entries, checked against this mm's VMAs.
            indexes = np.flatnonzero(row)
            _check_swap_entries(k, mm, table, base, row, swap_refs if table_refs[table] == 1 else None)
            held = (int(np.count_nonzero(k.counted_pages(row))), int(np.count_nonzero(k.swap_entries(row))))
            if held != (mem_map.table_rss[table], mem_map.table_swapents[table]):
                _fail(f"table {table}: table_rss {mem_map.table_rss[table]} and table_swapents {mem_map.table_swapents[table]}, "
                      f"but it holds {held[0]} pages and {held[1]} swap entries")
            swapents += held[1]
            indexes = indexes[(row[indexes] & MAPPED) != 0]
            entries = row[indexes]
            page_pfns = k.pfns_of(entries)
            addrs = base + (indexes.astype(np.int64) << arch.page_shift)
            for addr, entry, pfn in zip(addrs.tolist(), entries.tolist(), page_pfns.tolist()):
                vma = mm.find_vma(addr)
                where = f"pid {mm.owner}: entry {entry:#x} for {addr:#x} in table {table}"
                if vma is None:
                    _fail(f"{where} lies outside every VMA")
                if entry & _PAGE_RW and not vma.writable:
                    _fail(f"{where} is writable in a {vma.prot!r} VMA")
                if entry & _PAGE_PRESENT and not vma.readable:
                    _fail(f"{where} is present in a PROT_NONE VMA")
                if not entry & _PAGE_PRESENT and (not entry & _PAGE_PROTNONE or vma.prot != ""):
                    _fail(f"{where} is PROT_NONE in a {vma.prot!r} VMA")
                if vma.shared:
                    if vma.shmem.pages.get(vma.pgoff_of(addr, arch.page_shift)) != pfn:
                        _fail(f"{where} is not its shmem object's page")
                elif pfn != ZERO_PFN and mem_map.kind[pfn] != PG_ANON:
                    _fail(f"{where} maps a {KIND_NAMES[mem_map.kind[pfn]]} frame in a private VMA")
                if pfn == ZERO_PFN and entry & _PAGE_RW:
                    _fail(f"{where} makes the zero page writable")
            if table_refs[table] == 1:  # count each table's entries once, however many share it
                counted = page_pfns[page_pfns != ZERO_PFN]
                np.add.at(entry_refs, counted, 1)
            rss += int(np.count_nonzero(page_pfns != ZERO_PFN))
            vpns.append(addrs >> arch.page_shift)
            pfns.append(page_pfns)
            writable.append(((entries & _PAGE_RW) != 0) & ((entries & _PAGE_PRESENT) != 0) & upper_rw)

        walk(mm.pgd, 0, 0, True)
        if k.get_mm_counters(mm) != (rss, swapents):
            _fail(f"pid {mm.owner}: rss and swapents are {k.get_mm_counters(mm)} but its tables map {rss} pages and hold {swapents} swap entries")
        if pgtables * arch.page_size != mm.pgtables_bytes:
            _fail(f"pid {mm.owner}: pgtables_bytes is {mm.pgtables_bytes} but it reaches {pgtables} tables")
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))
        mappings.append((mm, cat(vpns, np.int64), cat(pfns, np.int64), cat(writable, bool)))

    _check_frames(k, table_refs, entry_refs, reached)
    if swap_refs != k.swap.count or k.swap.count.keys() != k.swap.data.keys():
        _fail(f"swap counts {k.swap.count} but the tables hold {swap_refs}")
    _check_exclusive_writes(k, mappings)
    _check_tlb(k, mappings)


def _check_swap_entries(k: Kernel, mm, table: int, base: int, row, swap_refs: dict | None) -> None:
    """Swap entries lie in private VMAs and name a slot; count each table's once."""
    swapped = np.flatnonzero((row != 0) & ((row & MAPPED) == 0))
    for index in swapped.tolist():
        addr = base + (index << k.arch.page_shift)
        vma = mm.find_vma(addr)
        if vma is None or vma.shared:
            _fail(f"pid {mm.owner}: swap entry {int(row[index]):#x} for {addr:#x} is not in a private VMA")
        if swap_refs is not None:
            slot = k.entry_pfn(row[index])
            swap_refs[slot] = swap_refs.get(slot, 0) + 1


def _check_frames(k: Kernel, table_refs, entry_refs, reached) -> None:
    mem_map, kind = k.mem_map, k.mem_map.kind
    pgtables = kind == PG_PGTABLE
    if ((mem_map.table_rss != 0) | (mem_map.table_swapents != 0))[~pgtables].any():
        _fail(f"frames {np.flatnonzero(((mem_map.table_rss != 0) | (mem_map.table_swapents != 0)) & ~pgtables)[:8].tolist()} are no tables but count pages")
    if (pgtables & ~reached).any():
        _fail(f"page-table frames {np.flatnonzero(pgtables & ~reached)[:8].tolist()} are reached by no mm (leaked)")
    bad = np.flatnonzero(pgtables & (mem_map.refcount != table_refs))
    if len(bad):
        t = int(bad[0])
        _fail(f"table {t}: use count {mem_map.refcount[t]} but {table_refs[t]} upper entries point at it")
    anon = kind == PG_ANON
    bad = np.flatnonzero(anon & ((mem_map.mapcount != entry_refs) | (mem_map.refcount != entry_refs)))
    if len(bad):
        p = int(bad[0])
        _fail(f"anon page {p}: refcount {mem_map.refcount[p]}, mapcount {mem_map.mapcount[p]}, but {entry_refs[p]} entries map it")
    if (anon & (entry_refs == 0)).any():
        _fail(f"anon pages {np.flatnonzero(anon & (entry_refs == 0))[:8].tolist()} are mapped by no entry (leaked)")
    if (mem_map.anon_exclusive & (entry_refs != 1)).any():
        _fail(f"pages {np.flatnonzero(mem_map.anon_exclusive & (entry_refs != 1))[:8].tolist()} are anon_exclusive but not mapped once")
    cached = np.zeros(len(kind), dtype=np.int64)
    for shmem in {id(v.shmem): v.shmem for t in k.tasks.values() if t.mm for v in t.mm.vmas if v.shmem}.values():
        pfns = np.fromiter(shmem.pages.values(), dtype=np.int64, count=len(shmem.pages))
        np.add.at(cached, pfns, 1)
    shmem_pages = kind == PG_SHMEM
    if (shmem_pages != (cached == 1)).any() or (cached > 1).any():
        _fail(f"shmem frames and shmem page caches disagree at {np.flatnonzero(shmem_pages != (cached == 1))[:8].tolist()}")
    bad = np.flatnonzero(shmem_pages & ((mem_map.mapcount != entry_refs) | (mem_map.refcount != entry_refs + 1)))
    if len(bad):
        p = int(bad[0])
        _fail(f"shmem page {p}: refcount {mem_map.refcount[p]}, mapcount {mem_map.mapcount[p]}, but {entry_refs[p]} entries map it")
    free = kind == PG_FREE
    # A stale mapcount counts too: alloc does not reset it, and a shmem fault adds to it.
    used = free & ((mem_map.refcount != 0) | (mem_map.mapcount != 0) | (entry_refs != 0) | (table_refs != 0))
    if used.any():
        _fail(f"free frames {np.flatnonzero(used)[:8].tolist()} are in use")
    if int(free.sum()) != mem_map.nr_free or set(mem_map.free_frames().tolist()) != set(np.flatnonzero(free).tolist()):
        _fail("the free-frame stack disagrees with the frames marked free")
    dirty = np.flatnonzero(free)[k.phys.tables[free].any(axis=1)]
    if len(dirty):
        _fail(f"free frames {dirty[:8].tolist()} are not zero")


def _check_exclusive_writes(k: Kernel, mappings) -> None:
    if not mappings:
        return
    pfns = np.concatenate([m[2] for m in mappings])
    writable = np.concatenate([m[3] for m in mappings])
    counts = np.bincount(pfns, minlength=k.phys.nframes)
    anon = k.mem_map.kind[pfns] == PG_ANON
    bad = writable & (anon | (pfns == ZERO_PFN)) & ((counts[pfns] > 1) | (pfns == ZERO_PFN))
    if bad.any():
        pfn = int(pfns[np.flatnonzero(bad)[0]])
        who = [(mm.owner, hex(int(v) << k.arch.page_shift)) for mm, vpns, ps, _ in mappings for v, p in zip(vpns, ps) if p == pfn]
        _fail(f"page {pfn} is writable by one of {who}, which all map it (a hidden shared segment)")


def _check_tlb(k: Kernel, mappings) -> None:
    by_pcid = {mm.pcid: (mm, dict(zip(vpns.tolist(), zip(pfns.tolist(), w.tolist())))) for mm, vpns, pfns, w in mappings}
    for (pcid, vpn), cached in k.tlb.entries.items():
        if pcid not in by_pcid:
            _fail(f"TLB entry for {vpn << k.arch.page_shift:#x} belongs to a dead address space (pcid {pcid})")
        mm, effective = by_pcid[pcid]
        current = effective.get(vpn)
        addr = vpn << k.arch.page_shift
        entry = k.follow_pte(mm, addr)
        if current is None or not entry & _PAGE_PRESENT or current[0] != cached.pfn:
            _fail(f"pid {mm.owner}: stale TLB entry {addr:#x} -> frame {cached.pfn}; the tables say {entry:#x}")
        if cached.writable and not current[1]:
            _fail(f"pid {mm.owner}: TLB lets {addr:#x} be written; the tables make it read-only")
