"""Simulated physical memory: one byte array, frame by frame.

Page tables live here like any other page: `tables[pfn]` is frame `pfn` seen as an array of
page-table entries, `frame_bytes(pfn)` the same frame seen as bytes. The array is allocated
zeroed and the host only commits the parts that are written, so untouched RAM costs nothing.
"""

from __future__ import annotations

import numpy as np

from .arch import Arch


class PhysicalMemory:
    def __init__(self, arch: Arch, ram: int):
        self.arch = arch
        self.nframes = ram >> arch.page_shift
        self.bytes = np.zeros(self.nframes << arch.page_shift, dtype=np.uint8)
        # The same memory as entries: tables[pfn, index] is entry `index` of the table in frame pfn.
        self.tables = self.bytes.view(arch.dtype).reshape(self.nframes, arch.entries)

    def frame_bytes(self, pfn: int) -> np.ndarray:
        size = self.arch.page_size
        return self.bytes[pfn * size : (pfn + 1) * size]

    def read(self, paddr: int, length: int) -> bytes:
        return self.bytes[paddr : paddr + length].tobytes()

    def write(self, paddr: int, data: bytes) -> None:
        self.bytes[paddr : paddr + len(data)] = np.frombuffer(data, dtype=np.uint8)
