"""The MMU: a TLB in front of a page walk through physical memory.

It knows nothing of processes: it is given CR3 (the root table's frame) and a PCID (which
address space the TLB entries belong to), as the CPU is. What it does, as x86 does:

- a walk starts at CR3 and reads one entry per level from physical memory;
- an access is allowed only if every level allows it: RW and US are ANDed along the walk;
- a successful walk sets Accessed in every entry it used and, for a write, Dirty in the last;
- a failed walk raises PageFault with CR2 (the address) and the error code, and drops any TLB
  entry for that address (SDM 4.10.4.1), so the retry after the kernel's fix walks again;
- the TLB caches the translation with its permissions and dirty state, and is believed until the
  kernel flushes it. A write through a cached entry whose Dirty is not yet set walks again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .arch import (
    PF_PROT,
    PF_USER,
    PF_WRITE,
    PFN_SHIFT,
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_RW,
    _PAGE_USER,
)
from .memory import PhysicalMemory


class PageFault(Exception):
    """What the CPU delivers to the kernel: CR2 and the error code."""

    def __init__(self, cr2: int, error_code: int):
        super().__init__(f"page fault at {cr2:#x}, error code {error_code:#x}")
        self.cr2 = cr2
        self.error_code = error_code

    @property
    def write(self) -> bool:
        return bool(self.error_code & PF_WRITE)

    @property
    def protection(self) -> bool:
        return bool(self.error_code & PF_PROT)


@dataclass
class TLBEntry:
    pfn: int
    writable: bool
    dirty: bool


class TLB:
    """A translation cache tagged by PCID, evicting the least recently used entry."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self.entries: OrderedDict[tuple[int, int], TLBEntry] = OrderedDict()
        self.hits = self.misses = 0

    def lookup(self, pcid: int, vpn: int) -> TLBEntry | None:
        entry = self.entries.get((pcid, vpn))
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
            self.entries.move_to_end((pcid, vpn))
        return entry

    def fill(self, pcid: int, vpn: int, entry: TLBEntry) -> None:
        self.entries[(pcid, vpn)] = entry
        self.entries.move_to_end((pcid, vpn))
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)

    def invlpg(self, pcid: int, vpn: int) -> None:
        self.entries.pop((pcid, vpn), None)

    def flush_range(self, pcid: int, first_vpn: int, end_vpn: int) -> None:
        for key in [k for k in self.entries if k[0] == pcid and first_vpn <= k[1] < end_vpn]:
            del self.entries[key]

    def flush_pcid(self, pcid: int) -> None:
        for key in [k for k in self.entries if k[0] == pcid]:
            del self.entries[key]

    def flush_all(self) -> None:
        self.entries.clear()


class MMU:
    def __init__(self, phys: PhysicalMemory, tlb: TLB):
        self.phys = phys
        self.arch = phys.arch
        self.tlb = tlb
        self.walks = 0

    def access(self, cr3: int, pcid: int, vaddr: int, write: bool) -> int:
        """Translate a user-mode access; return the physical address or raise PageFault."""
        arch = self.arch
        vpn = vaddr >> arch.page_shift
        offset = vaddr & (arch.page_size - 1)
        cached = self.tlb.lookup(pcid, vpn)
        if cached is not None:
            if not write or cached.dirty:
                return (cached.pfn << arch.page_shift) | offset
            if not cached.writable:
                # Permissions come from the TLB without a walk; the fault drops the entry.
                self.tlb.invlpg(pcid, vpn)
                raise PageFault(vaddr, PF_PROT | PF_WRITE | PF_USER)
        try:
            pfn, writable = self.walk(cr3, vaddr, write)
        except PageFault:
            self.tlb.invlpg(pcid, vpn)
            raise
        self.tlb.fill(pcid, vpn, TLBEntry(pfn, writable, dirty=write))
        return (pfn << arch.page_shift) | offset

    def walk(self, cr3: int, vaddr: int, write: bool) -> tuple[int, bool]:
        self.walks += 1
        arch, tables = self.arch, self.phys.tables
        error = (PF_WRITE if write else 0) | PF_USER
        table, writable, user, used = cr3, True, True, []
        for level in range(arch.levels):
            index = arch.index(level, vaddr)
            entry = int(tables[table, index])
            if not entry & _PAGE_PRESENT:
                raise PageFault(vaddr, error)
            writable &= bool(entry & _PAGE_RW)
            user &= bool(entry & _PAGE_USER)
            used.append((table, index, entry))
            table = (entry & arch.pfn_mask) >> PFN_SHIFT
        if not user or (write and not writable):
            raise PageFault(vaddr, error | PF_PROT)
        for level, (t, i, entry) in enumerate(used):
            bits = _PAGE_ACCESSED | (_PAGE_DIRTY if write and level == arch.levels - 1 else 0)
            if entry & bits != bits:
                tables[t, i] = entry | bits
        return table, writable
