"""Per-frame metadata in the spirit of `struct page`, and the frame allocator.

Invariants (the checker recounts each one):

- an anonymous page's refcount equals its mapcount: the page-table entries that map it;
- a shmem page holds one extra reference, its page-cache slot;
- a page-table page's refcount is its *use count*: the number of upper-level entries that
  point at it (Phillips: "use count = page count of the table page"). Shared means > 1;
- mapcount counts entries, not processes: a page mapped through a table shared by three
  processes has mapcount 1. Unsharing the table copies the entry, and the page's counts go up;
- anon_exclusive (PG_anon_exclusive) likewise belongs to the entry: one entry maps the page.
  Linux means one process; the two agree wherever a write can happen, because no write goes
  through a shared table (sharing rule 2), and a table of this mm's own is reached by one mm;
- a page-table page's `table_rss` and `table_swapents` count the pages (not the zero page)
  and the swap entries its entries hold. Every mm that reaches the table counts them in its
  VmRSS and VmSwap, so a page filled into a shared table by one sharer is charged to all of
  them without anyone having to find the others. This is ptsim's choice: Linux keeps these
  counts per mm (MM_ANONPAGES, MM_SWAPENTS), which a table reached by several mms defeats.
  Phillips' patch (16 Feb 2002, <E16c9FS-0004In-00@starship.berlin>) charged a child nothing
  for a table shared at fork and charged an unsharing mm for every page the table maps
  (`mm->rss++` per entry in `__pte_alloc`), so a parent that unshares counts its pages twice;
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
UNMOVABLE_SHARE = 16  # 1/16 of memory is first given to page tables (1 GiB of them map 512 GiB)


class FreeList:
    """A stack of free frames: the frame on top goes first, a freed frame goes on top."""

    def __init__(self, pfns: np.ndarray):
        self.stack = pfns[::-1].copy()  # pfns[0] on top
        self.nr = len(pfns)

    def pop(self, n: int) -> np.ndarray:
        self.nr -= n
        return self.stack[self.nr : self.nr + n][::-1].copy()

    def push(self, pfns: np.ndarray) -> None:
        self.stack[self.nr : self.nr + len(pfns)] = pfns[::-1]
        self.nr += len(pfns)

    def frames(self) -> np.ndarray:
        return self.stack[: self.nr]


class MemMap:
    """`mem_map[]`: one slot per frame, as parallel arrays so bulk operations stay vectorised.

    Like Linux's page allocator, which keeps unmovable allocations (page tables) in other
    pageblocks than movable ones (user pages), frames come from two free lists: page tables
    from the top of memory down, everything else from the bottom up; each list falls back on
    the other when it runs dry. A process's tables therefore tend to sit side by side, and a
    fork can work on runs of them in place.
    """

    def __init__(self, phys: PhysicalMemory):
        n = phys.nframes
        if n < 8:
            raise ValueError(f"ram: {n} frames is too small a machine (at least 8 are needed)")
        self.phys = phys
        self.refcount = np.zeros(n, dtype=np.int32)
        self.mapcount = np.zeros(n, dtype=np.int32)
        self.kind = np.zeros(n, dtype=np.uint8)
        self.anon_exclusive = np.zeros(n, dtype=bool)  # PG_anon_exclusive: only one entry maps it
        self.table_rss = np.zeros(n, dtype=np.int32)  # of a page-table page: pages its entries map
        self.table_swapents = np.zeros(n, dtype=np.int32)  # of a page-table page: its swap entries
        self.kind[0] = self.kind[ZERO_PFN] = PG_RESERVED
        self.split = n - max(n // UNMOVABLE_SHARE, 4)  # frames from here up hold tables first
        self.movable = FreeList(np.arange(ZERO_PFN + 1, self.split, dtype=np.int64))
        self.unmovable = FreeList(np.arange(n - 1, self.split - 1, -1, dtype=np.int64))

    @property
    def nr_free(self) -> int:
        return self.movable.nr + self.unmovable.nr

    fail_after: int | None = None  # failure injection, for tests: see `alloc`

    def alloc(self, n: int, kind: int) -> np.ndarray:
        """`n` frames of `kind`, taken from the free lists; OutOfMemory if fewer are free.

        Failure injection, as SQLite's tests make the N-th malloc fail: while `fail_after` is
        not None, it is how many more allocations succeed before one raises OutOfMemory, however
        many frames are free. It counts allocations, not frames (a fork takes a run of tables
        in one), so that a test can fail each allocation of a call in turn: 0, 1, 2, ... until
        the call completes with the hook still armed. Firing disarms it, so the test can tell
        an injected failure from a real one, and the rollback and the calls after it run as
        usual. While armed, every Kernel.transaction saves state, frames to spare or not: any
        allocation may fail. That leaves the path that saves nothing to a test of its own, that
        no call allocates more frames than the bound its transaction declares. Unarmed, the
        hook costs one comparison.
        """
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.fail_after = None
                raise OutOfMemory(f"{n} frame(s) needed: failure injected")
            self.fail_after -= 1
        if n > self.nr_free:
            raise OutOfMemory(f"{n} frame(s) needed, {self.nr_free} free")
        first, second = (self.unmovable, self.movable) if kind == PG_PGTABLE else (self.movable, self.unmovable)
        taken = min(n, first.nr)
        pfns = first.pop(n) if taken == n else np.concatenate([first.pop(taken), second.pop(n - taken)])
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
        self.table_rss[pfns] = self.table_swapents[pfns] = 0
        self.movable.push(pfns[pfns < self.split])
        self.unmovable.push(pfns[pfns >= self.split])

    def free_frames(self) -> np.ndarray:
        return np.concatenate([self.movable.frames(), self.unmovable.frames()])

    def snapshot(self):
        arrays = (self.refcount, self.mapcount, self.kind, self.anon_exclusive, self.table_rss, self.table_swapents,
                  self.movable.stack, self.unmovable.stack)
        return tuple(a.copy() for a in arrays) + (self.movable.nr, self.unmovable.nr)

    def restore(self, snap) -> None:
        """Put the metadata back as `snapshot` found it; zero the frames freed by going back."""
        refcount, mapcount, kind, excl, table_rss, table_swapents, movable, unmovable, nr_movable, nr_unmovable = snap
        reborn_free = np.flatnonzero((kind == PG_FREE) & (self.kind != PG_FREE))
        self.phys.tables[reborn_free] = 0
        self.refcount[:], self.mapcount[:], self.kind[:], self.anon_exclusive[:] = refcount, mapcount, kind, excl
        self.table_rss[:], self.table_swapents[:] = table_rss, table_swapents
        self.movable.stack[:], self.unmovable.stack[:] = movable, unmovable
        self.movable.nr, self.unmovable.nr = nr_movable, nr_unmovable
