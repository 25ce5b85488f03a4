"""Paging geometries and the x86 page-table entry format.

An entry, at every level, is an x86 entry (Intel SDM vol. 3, 4.5):

    # PTE: | NX | ...avail... | PFN (bits 12 and up) | avail | G | PS | D | A | PCD | PWT | US | RW | P |
    #        63                 12                      9-11    8   7    6   5   4     3     2    1    0

The PFN field always starts at bit 12, whatever the page size, so that `hex(pte)` reads as a
kernel hacker expects; a frame's physical address is `pfn * page_size`.

While P is clear the hardware ignores every other bit, and Linux reuses them: bit 8 (G on a
present entry) is _PAGE_PROTNONE, a page the kernel keeps mapped but that PROT_NONE forbids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

_PAGE_PRESENT = 1 << 0
_PAGE_RW = 1 << 1
_PAGE_USER = 1 << 2
_PAGE_PWT = 1 << 3
_PAGE_PCD = 1 << 4
_PAGE_ACCESSED = 1 << 5
_PAGE_DIRTY = 1 << 6
_PAGE_PSE = 1 << 7
_PAGE_PROTNONE = 1 << 8  # only meaningful while _PAGE_PRESENT is clear, as in Linux
PFN_SHIFT = 12

# What an upper-level entry pointing at a table carries (Linux: _PAGE_TABLE, less A and D, which
# the walk sets). Write permission is the AND of RW at every level, so upper entries grant it.
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER

# Page-fault error code pushed by the CPU (SDM 4.7).
PF_PROT = 1 << 0  # 0: the entry was not present; 1: a protection violation
PF_WRITE = 1 << 1
PF_USER = 1 << 2


@dataclass(frozen=True)
class Arch:
    """A paging geometry: how many levels, how wide a table, how big a page.

    The figures derived from the fields are computed once, on first use: the kernel and the
    MMU ask for them on every walk.
    """

    name: str
    levels: int  # paging levels, root (CR3 points at it) first
    entries: int  # entries per table; a table is exactly one page
    entry_bytes: int
    page_shift: int
    pfn_bits: int  # width of the PFN field that starts at bit 12
    level_names: tuple[str, ...]  # Linux's names for the tables, root first
    task_size: int  # user addresses are [mmap_min_addr, task_size)
    mmap_min_addr: int

    def __post_init__(self):
        assert self.entries * self.entry_bytes == self.page_size, "a table fills one page"
        assert len(self.level_names) == self.levels

    @cached_property
    def page_size(self) -> int:
        return 1 << self.page_shift

    @cached_property
    def index_bits(self) -> int:
        return self.entries.bit_length() - 1

    @cached_property
    def va_bits(self) -> int:
        return self.page_shift + self.levels * self.index_bits

    @cached_property
    def dtype(self):
        return np.dtype("<u8" if self.entry_bytes == 8 else "<u4")  # x86 is little-endian

    @cached_property
    def pfn_mask(self) -> int:
        return ((1 << self.pfn_bits) - 1) << PFN_SHIFT

    @cached_property
    def shifts(self) -> tuple[int, ...]:
        """For each level (0 = root), the address bit where the index into its tables starts."""
        return tuple(self.page_shift + (self.levels - 1 - level) * self.index_bits for level in range(self.levels))

    def shift(self, level: int) -> int:
        """Address bit where the index into a table of `level` (0 = root) starts."""
        return self.shifts[level]

    def span(self, level: int) -> int:
        """Bytes of address space one table of `level` maps."""
        return 1 << (self.shift(level) + self.index_bits)

    def index(self, level: int, vaddr: int) -> int:
        return (vaddr >> self.shift(level)) & (self.entries - 1)

    @cached_property
    def pte_span(self) -> int:
        """Bytes one last-level table maps (2 MiB on x86_64, 4 MiB on i386)."""
        return self.span(self.levels - 1)

    @cached_property
    def thp_mmap_align(self) -> int:
        """The boundary a 64-bit Linux gives a private anonymous mapping whose length is a
        multiple of it, when mmap is given no address: one last-level table's span (PMD_SIZE),
        so that a transparent huge page could map it (since 6.7; only for such lengths since
        6.12). 32-bit kernels do not: 0."""
        return self.pte_span if self.entry_bytes == 8 else 0

    def mk_entry(self, pfn: int, flags: int) -> int:
        return (pfn << PFN_SHIFT) | flags

    def clear_bits(self, bits: int):
        """An entry-sized mask with `bits` clear, for `entries & arch.clear_bits(_PAGE_RW)`."""
        return self.dtype.type(~bits & ((1 << (8 * self.entry_bytes)) - 1))


ARCHES = {
    a.name: a
    for a in (
        Arch("x86_64", 4, 512, 8, 12, 40, ("pgd", "pud", "pmd", "pte"), (1 << 47) - 4096, 0x10000),
        Arch("i386", 2, 1024, 4, 12, 20, ("pgd", "pte"), 0xC000_0000, 0x10000),
        # Small enough to draw whole: 64-byte pages, 3 levels of 8 entries, 32 KiB of address space.
        Arch("toy", 3, 8, 8, 6, 40, ("pgd", "pmd", "pte"), 1 << 15, 64),
    )
}
