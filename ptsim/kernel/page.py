"""Per-frame metadata in the spirit of `struct page`, and the frame allocator.

Invariants (the checker recounts each one):

- an anonymous page's refcount equals its mapcount: the page-table entries that map it;
- a shmem page holds one extra reference, its page-cache slot;
- a page-table page's refcount is its *use count*: the number of upper-level entries that
  point at it (Phillips: "use count = page count of the table page"). Shared means > 1;
- mapcount counts entries, not processes: a page mapped through a table shared by three
  processes has mapcount 1. Unsharing the table copies the entry, and the page's counts go up;
- free frames are zero, so an allocated frame needs no clearing (the host never commits
  memory for a frame that is never written).
"""

from __future__ import annotations

import numpy as np

from ..errors import OutOfMemory
from ..hardware import PhysicalMemory

# Frame kinds.
PG_FREE = 0
PG_RESERVED = 1  # frame 0 (firmware) and the zero page: never counted, never freed
PG_PGTABLE = 2
PG_ANON = 3
PG_SHMEM = 4
KIND_NAMES = {PG_FREE: "free", PG_RESERVED: "reserved", PG_PGTABLE: "pgtable", PG_ANON: "anon", PG_SHMEM: "shmem"}

ZERO_PFN = 1  # the one shared zero page (empty_zero_page)


class MemMap:
    """`mem_map[]`: one slot per frame, as parallel arrays so bulk operations stay vectorised."""

    def __init__(self, phys: PhysicalMemory):
        n = phys.nframes
        if n < 8:
            raise ValueError(f"ram: {n} frames is too small a machine (at least 8 are needed)")
        self.phys = phys
        self.refcount = np.zeros(n, dtype=np.int32)
        self.mapcount = np.zeros(n, dtype=np.int32)
        self.kind = np.zeros(n, dtype=np.uint8)
        self.anon_exclusive = np.zeros(n, dtype=bool)  # PG_anon_exclusive: only one mm maps it
        self.kind[0] = self.kind[ZERO_PFN] = PG_RESERVED
        # A stack of free frames, lowest pfn on top, so allocation order is deterministic.
        self.free_stack = np.arange(n - 1, ZERO_PFN, -1, dtype=np.int64)
        self.nr_free = len(self.free_stack)

    def alloc(self, n: int, kind: int) -> np.ndarray:
        if n > self.nr_free:
            raise OutOfMemory(f"{n} frame(s) needed, {self.nr_free} free")
        pfns = self.free_stack[self.nr_free - n : self.nr_free][::-1].copy()
        self.nr_free -= n
        self.kind[pfns] = kind
        self.refcount[pfns] = 1
        return pfns

    def alloc_one(self, kind: int) -> int:
        return int(self.alloc(1, kind)[0])

    def free(self, pfns) -> None:
        pfns = np.atleast_1d(np.asarray(pfns, dtype=np.int64))
        assert (self.kind[pfns] != PG_FREE).all() and (self.kind[pfns] != PG_RESERVED).all()
        self.phys.tables[pfns] = 0
        self.kind[pfns] = PG_FREE
        self.refcount[pfns] = 0
        self.mapcount[pfns] = 0
        self.anon_exclusive[pfns] = False
        self.free_stack[self.nr_free : self.nr_free + len(pfns)] = pfns[::-1]
        self.nr_free += len(pfns)

    def snapshot(self):
        return tuple(a.copy() for a in (self.refcount, self.mapcount, self.kind, self.anon_exclusive, self.free_stack)) + (self.nr_free,)

    def restore(self, snap) -> None:
        """Put the metadata back as `snapshot` found it; zero the frames freed by going back."""
        refcount, mapcount, kind, excl, stack, nr_free = snap
        reborn_free = np.flatnonzero((kind == PG_FREE) & (self.kind != PG_FREE))
        self.phys.tables[reborn_free] = 0
        self.refcount[:], self.mapcount[:], self.kind[:], self.anon_exclusive[:] = refcount, mapcount, kind, excl
        self.free_stack[:] = stack
        self.nr_free = nr_free
