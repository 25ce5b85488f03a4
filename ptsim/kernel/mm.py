"""Address spaces: `mm_struct`, `vm_area_struct` and the shmem object behind MAP_SHARED.

An mm's VMAs are kept sorted and never overlap. After an mmap or an mprotect, neighbours
merge as Linux's vma_merge merges them. It matters for one reason: a VMA that has never held an
anonymous page of its own, joined to one that has, shares its anon_vma, and fork then copies
all its entries (the zero page's too), where it would have copied none. ptsim keeps no
anon_vma object, only whether there is one and whether it came through fork, which is all
that decides the merges that change anything (see `mergeable`).
"""

from __future__ import annotations

import bisect
import dataclasses
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
    anon_vma_forked: bool = False  # the anon_vma came through fork: an anon_vma_chain of more than one
    account: bool = False  # VM_ACCOUNT: private memory charged for being writable (see sys_mprotect)

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
    # VmRSS and VmSwap are counted in the tables themselves (MemMap.table_rss): Kernel.get_mm_rss
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
        tail = dataclasses.replace(vma, start=addr, pgoff=vma.pgoff_of(addr, page_shift))
        if vma.shmem is not None:
            vma.shmem.nr_vmas += 1
        vma.end = addr
        self.insert_vma(tail)

    def vma_merge(self, start: int, end: int, page_shift: int) -> None:
        """Merge the neighbours that meet at an address in [start, end] and are `mergeable`:
        after an mmap or mprotect of [start, end), the new or changed VMAs with each other and
        with the VMAs on either side."""
        merged: list[VMA] = []
        for vma in self.vmas:
            prev = merged[-1] if merged else None
            if prev is not None and start <= vma.start <= end and mergeable(prev, vma, page_shift):
                prev.end = vma.end
                prev.anon_vma = prev.anon_vma or vma.anon_vma
                if vma.shmem is not None:
                    vma.shmem.nr_vmas -= 1
            else:
                merged.append(vma)
        self.vmas = merged

    def vm_size(self) -> int:
        return sum(v.end - v.start for v in self.vmas)


def mergeable(prev: VMA, vma: VMA, page_shift: int) -> bool:
    """Whether Linux merges two VMAs of one mm (is_mergeable_vma, is_mergeable_anon_vma).

    They must touch and have the same flags (prot, and VM_ACCOUNT) and the same file: the same
    shmem object at consecutive offsets, or none (private memory's offset is its address in
    pages, always consecutive). Of private VMAs, Linux merges one with no anon_vma into one
    with an anon_vma only if that anon_vma was made in this mm (a VMA whose anon_vma came
    through fork "had uncowed parents"), and two with anon_vmas only if it is the same one.
    ptsim, which has no anon_vma objects, merges two with anon_vmas when both or neither came
    through fork: whether those merge changes nothing, since both are copied at fork anyway.
    """
    if prev.end != vma.start or prev.prot != vma.prot or prev.account != vma.account or prev.shmem is not vma.shmem:
        return False
    if vma.shmem is not None:
        return prev.pgoff_of(prev.end, page_shift) == vma.pgoff
    return prev.anon_vma_forked == vma.anon_vma_forked
