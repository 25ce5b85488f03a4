"""Swap space (Linux's mm/swapfile.c): page contents by slot, and each slot's count.

A swap entry is a non-present entry that is not PROT_NONE: P and _PAGE_PROTNONE clear, the
swap slot in the PFN field (Linux packs type and offset differently; the idea is the same).
The slot's count, like Linux's swap_map, is the number of entries that hold it. Pages go out
in vmscan.py and come back in memory.py's do_swap_page.
"""

from __future__ import annotations

import numpy as np


class SwapDevice:
    """Swap space: page contents by slot, and how many entries hold each slot (swap_map)."""

    def __init__(self):
        self.data: dict[int, bytes] = {}
        self.count: dict[int, int] = {}
        self._next_slot = 1  # slot 0 would make an empty entry

    def store(self, data: bytes) -> int:
        slot, self._next_slot = self._next_slot, self._next_slot + 1
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

    def snapshot(self):
        return dict(self.data), dict(self.count), self._next_slot

    def restore(self, snap) -> None:
        self.data, self.count, self._next_slot = dict(snap[0]), dict(snap[1]), snap[2]
