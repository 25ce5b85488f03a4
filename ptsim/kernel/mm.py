"""Address spaces: `mm_struct`, `vm_area_struct` and the shmem object behind MAP_SHARED.

An mm's VMAs are kept sorted and never overlap. VMAs are not merged when neighbours become
compatible (Linux's vma_merge): merging changes no access, fault or page-table outcome.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

PROTS = ("", "r", "rw")


@dataclass
class Shmem:
    """The anonymous shmem file behind a MAP_SHARED|MAP_ANONYMOUS mapping: its page cache."""

    id: int
    pages: dict[int, int] = field(default_factory=dict)  # page offset -> pfn
    nr_vmas: int = 0  # VMAs that map it, in every mm; the file goes with the last


@dataclass
class VMA:
    start: int
    end: int
    prot: str  # "", "r" or "rw"
    shmem: Shmem | None = None  # None: private anonymous memory
    pgoff: int = 0  # page offset into shmem of `start`
    anon_vma: bool = False  # set by the first fault that puts an anonymous page here

    @property
    def shared(self) -> bool:
        return self.shmem is not None

    @property
    def readable(self) -> bool:
        return "r" in self.prot

    @property
    def writable(self) -> bool:
        return "w" in self.prot

    def pgoff_of(self, addr: int, page_shift: int) -> int:
        return self.pgoff + ((addr - self.start) >> page_shift)


@dataclass(eq=False)
class MM:
    """One address space. `pgd` is the root table's frame: what CR3 holds while it runs."""

    pgd: int
    pcid: int  # tags this mm's TLB entries
    owner: int  # pid of the process using it, for the event trace
    vmas: list[VMA] = field(default_factory=list)
    rss: int = 0  # resident pages mapped by its tables (anon and shmem; not the zero page)
    swapents: int = 0  # swap entries in its tables (VmSwap)
    pgtables_bytes: int = 0  # bytes of tables below the root reachable from pgd

    def find_vma(self, addr: int) -> VMA | None:
        i = bisect.bisect_right([v.start for v in self.vmas], addr) - 1
        if i >= 0 and addr < self.vmas[i].end:
            return self.vmas[i]
        return None

    def vmas_in(self, start: int, end: int) -> list[VMA]:
        return [v for v in self.vmas if v.start < end and start < v.end]

    def insert_vma(self, vma: VMA) -> None:
        assert not self.vmas_in(vma.start, vma.end)
        bisect.insort(self.vmas, vma, key=lambda v: v.start)

    def split_vma(self, addr: int, page_shift: int) -> None:
        """Make `addr` a VMA boundary if it falls inside one (__split_vma)."""
        vma = self.find_vma(addr)
        if vma is None or vma.start == addr:
            return
        tail = VMA(addr, vma.end, vma.prot, vma.shmem, vma.pgoff_of(addr, page_shift), vma.anon_vma)
        if vma.shmem is not None:
            vma.shmem.nr_vmas += 1
        vma.end = addr
        self.insert_vma(tail)

    def vm_size(self) -> int:
        return sum(v.end - v.start for v in self.vmas)
