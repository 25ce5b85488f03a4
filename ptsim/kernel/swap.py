"""Swap space (Linux's mm/swapfile.c): page contents by slot, and each slot's count.

A swap entry is a non-present entry that is not PROT_NONE: P and _PAGE_PROTNONE clear, the
swap slot in the PFN field (Linux packs type and offset differently; the idea is the same).
The slot's count, like Linux's swap_map, is the number of entries that hold it. Pages go out
in vmscan.py and come back in memory.py's do_swap_page.

Slots are reused, lowest free first, as Linux's scan_swap_map hands them out: the PFN field
names only so many (2**20 on i386), and a device that only ever grew would run out of them
long before it held that many pages.
"""

from __future__ import annotations

import heapq

import numpy as np

from ..errors import OutOfMemory


class SwapDevice:
    """Swap space: page contents by slot, and how many entries hold each slot (swap_map).

    `nr_slots`: slots 0 to nr_slots - 1 are nameable; slot 0 is never used, since its swap
    entry would be an empty one."""

    def __init__(self, nr_slots: int):
        if nr_slots < 2:
            raise ValueError(f"nr_slots must be at least 2 (slot 0 is never used), not {nr_slots}")
        self.nr_slots = nr_slots
        self.data: dict[int, bytes] = {}
        self.count: dict[int, int] = {}
        self._next_slot = 1  # every slot from here up is free and has never been used
        self._free: list[int] = []  # freed slots below _next_slot, a heap: the lowest on top

    def store(self, data: bytes) -> int:
        """Put a page in the lowest free slot; OutOfMemory, changing nothing, if none is left."""
        if self._free:
            slot = heapq.heappop(self._free)
        elif self._next_slot < self.nr_slots:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
        else:
            raise OutOfMemory(f"swap is full: all {self.nr_slots - 1} slots a swap entry can name are in use")
        self.data[slot], self.count[slot] = data, 1
        return slot

    def dup(self, slots) -> None:
        for slot in np.asarray(slots).tolist():
            self.count[slot] += 1

    def put(self, slots) -> None:
        for slot in np.asarray(slots).tolist():
            self.count[slot] -= 1
            if self.count[slot] == 0:
                del self.count[slot], self.data[slot]
                heapq.heappush(self._free, slot)

    def snapshot(self):
        return dict(self.data), dict(self.count), self._next_slot, list(self._free)

    def restore(self, snap) -> None:
        self.data, self.count, self._next_slot, self._free = dict(snap[0]), dict(snap[1]), snap[2], list(snap[3])
