"""The MMU and the TLB on their own, walking page tables built by hand in physical memory."""

import pytest

from ptsim.hardware import ARCHES, MMU, TLB, PageFault, PhysicalMemory, TLBEntry
from ptsim.hardware.arch import (
    PF_PROT,
    PF_USER,
    PF_WRITE,
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PRESENT,
    _PAGE_PROTNONE,
    _PAGE_RW,
    _PAGE_USER,
)

FULL = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER
DATA = 40  # the data frame every hand-built walk ends in
PCID = 7


def vaddr_for(arch, indexes, offset=0):
    """The virtual address whose index at each level is `indexes` (root first)."""
    return sum(i << arch.shift(level) for level, i in enumerate(indexes)) + offset


class HandBuilt:
    """Physical memory with one hand-built walk: tables in frames 2, 3, ... root first."""

    def __init__(self, arch_name="x86_64", flags=None, vaddr=None, tlb_capacity=64):
        arch = self.arch = ARCHES[arch_name]
        self.phys = PhysicalMemory(arch, 64 * arch.page_size)
        self.mmu = MMU(self.phys, TLB(tlb_capacity))
        self.tables = list(range(2, 2 + arch.levels))
        self.vaddr = vaddr_for(arch, range(1, arch.levels + 1), offset=5) if vaddr is None else vaddr
        flags = flags or [FULL] * arch.levels
        for level, table in enumerate(self.tables):
            below = self.tables[level + 1] if level + 1 < arch.levels else DATA
            self.set(level, arch.mk_entry(below, flags[level]))

    def slot(self, level):
        return self.tables[level], self.arch.index(level, self.vaddr)

    def entry(self, level):
        return int(self.phys.tables[self.slot(level)])

    def set(self, level, value):
        self.phys.tables[self.slot(level)] = value

    def access(self, write=False, vaddr=None):
        return self.mmu.access(self.tables[0], PCID, self.vaddr if vaddr is None else vaddr, write)

    def fault(self, write=False):
        with pytest.raises(PageFault) as info:
            self.access(write)
        return info.value

    @property
    def expected(self):
        return (DATA << self.arch.page_shift) | (self.vaddr & (self.arch.page_size - 1))

    def cached(self):
        return self.mmu.tlb.entries.get((PCID, self.vaddr >> self.arch.page_shift))


def flags_clearing(arch, level, bit):
    return [FULL & ~bit if i == level else FULL for i in range(arch.levels)]


# -- geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, levels, entries, entry_bytes, page_size, va_bits, pte_span, level_names",
    [
        ("x86_64", 4, 512, 8, 4096, 48, 2 << 20, ("pgd", "pud", "pmd", "pte")),
        ("i386", 2, 1024, 4, 4096, 32, 4 << 20, ("pgd", "pte")),
        ("toy", 3, 8, 8, 64, 15, 512, ("pgd", "pmd", "pte")),
    ],
)
def test_geometry_of_each_arch(name, levels, entries, entry_bytes, page_size, va_bits, pte_span, level_names):
    arch = ARCHES[name]
    assert (arch.levels, arch.entries, arch.entry_bytes, arch.page_size) == (levels, entries, entry_bytes, page_size)
    assert (arch.va_bits, arch.pte_span, arch.level_names) == (va_bits, pte_span, level_names)
    assert arch.entries * arch.entry_bytes == arch.page_size, "a table fills one page"
    assert arch.span(0) == 1 << va_bits
    assert arch.dtype.itemsize == entry_bytes


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_address_splits_into_one_index_per_level_and_an_offset(name):
    arch = ARCHES[name]
    indexes = [(3 * level + 1) % arch.entries for level in range(arch.levels)]
    vaddr = vaddr_for(arch, indexes, offset=arch.page_size - 1)
    assert [arch.index(level, vaddr) for level in range(arch.levels)] == indexes
    assert arch.shift(arch.levels - 1) == arch.page_shift


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_entry_holds_pfn_from_bit_12_whatever_the_page_size(name):
    arch = ARCHES[name]
    entry = arch.mk_entry(0x2A, _PAGE_PRESENT | _PAGE_RW)
    assert entry == 0x2A003
    assert (entry & arch.pfn_mask) >> 12 == 0x2A


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_tables_are_the_same_bytes_seen_as_entries(name):
    arch = ARCHES[name]
    phys = PhysicalMemory(arch, 16 * arch.page_size)
    phys.tables[3, 1] = arch.mk_entry(5, _PAGE_PRESENT)
    at = 3 * arch.page_size + arch.entry_bytes
    assert phys.read(at, arch.entry_bytes) == (0x5001).to_bytes(arch.entry_bytes, "little")
    assert phys.frame_bytes(3).any() and not phys.frame_bytes(2).any()


# -- the walk ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_walk_through_hand_built_tables_finds_the_frame(name):
    hw = HandBuilt(name)
    assert hw.access() == hw.expected
    assert hw.mmu.walks == 1


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_write_needs_rw_at_every_level(name):
    for level in range(ARCHES[name].levels):
        hw = HandBuilt(name, flags_clearing(ARCHES[name], level, _PAGE_RW))
        assert hw.access(write=False) == hw.expected
        hw.mmu.tlb.flush_pcid(PCID)
        fault = hw.fault(write=True)
        assert fault.error_code == PF_PROT | PF_WRITE | PF_USER, f"RW clear at level {level}"


@pytest.mark.parametrize("name", sorted(ARCHES))
def test_user_access_needs_us_at_every_level(name):
    for level in range(ARCHES[name].levels):
        hw = HandBuilt(name, flags_clearing(ARCHES[name], level, _PAGE_USER))
        fault = hw.fault(write=False)
        assert fault.error_code == PF_PROT | PF_USER and fault.protection and not fault.write, f"US clear at level {level}"


def test_read_sets_accessed_on_every_level_and_dirty_nowhere():
    hw = HandBuilt()
    hw.access(write=False)
    assert [hw.entry(level) & (_PAGE_ACCESSED | _PAGE_DIRTY) for level in range(4)] == [_PAGE_ACCESSED] * 4


def test_write_sets_dirty_only_on_the_leaf():
    hw = HandBuilt()
    hw.access(write=True)
    flags = [hw.entry(level) & (_PAGE_ACCESSED | _PAGE_DIRTY) for level in range(4)]
    assert flags == [_PAGE_ACCESSED] * 3 + [_PAGE_ACCESSED | _PAGE_DIRTY]


def test_failed_walk_sets_no_accessed_bit():
    hw = HandBuilt(flags=flags_clearing(ARCHES["x86_64"], 3, _PAGE_RW))
    hw.fault(write=True)
    assert not any(hw.entry(level) & _PAGE_ACCESSED for level in range(4))


@pytest.mark.parametrize("write", [False, True])
@pytest.mark.parametrize("level", range(4))
def test_not_present_fault_reports_cr2_and_error_code(level, write):
    hw = HandBuilt()
    hw.set(level, 0)
    fault = hw.fault(write)
    assert fault.cr2 == hw.vaddr
    assert fault.error_code == PF_USER | (PF_WRITE if write else 0)
    assert not fault.protection and fault.write == write


def test_not_present_entry_ignores_its_other_bits():
    hw = HandBuilt()
    hw.set(3, ARCHES["x86_64"].mk_entry(DATA, _PAGE_RW | _PAGE_USER | _PAGE_PROTNONE))
    assert hw.fault(write=False).error_code == PF_USER


# -- the TLB -----------------------------------------------------------------------------


def test_tlb_caches_translation_so_second_access_does_not_walk():
    hw = HandBuilt()
    assert hw.access() == hw.access(vaddr=hw.vaddr + 1) - 1
    assert hw.mmu.walks == 1
    assert (hw.mmu.tlb.hits, hw.mmu.tlb.misses) == (1, 1)


def test_tlb_is_believed_until_flushed():
    hw = HandBuilt()
    hw.access()
    hw.set(3, ARCHES["x86_64"].mk_entry(DATA + 1, FULL))
    assert hw.access() == hw.expected, "the TLB still says the old frame"
    hw.mmu.tlb.invlpg(PCID, hw.vaddr >> 12)
    assert hw.access() == hw.expected + 4096


def test_tlb_entries_are_tagged_by_pcid():
    hw = HandBuilt()
    hw.access()
    hw.mmu.access(hw.tables[0], PCID + 1, hw.vaddr, False)
    assert hw.mmu.walks == 2


def test_write_through_cached_read_only_entry_faults_without_walk_and_drops_entry():
    hw = HandBuilt(flags=flags_clearing(ARCHES["x86_64"], 1, _PAGE_RW))
    hw.access(write=False)
    assert hw.cached() == TLBEntry(DATA, writable=False, dirty=False)
    fault = hw.fault(write=True)
    assert fault.error_code == PF_PROT | PF_WRITE | PF_USER and fault.cr2 == hw.vaddr
    assert hw.mmu.walks == 1 and hw.cached() is None


def test_write_through_cached_clean_entry_walks_again_to_set_dirty():
    hw = HandBuilt()
    hw.access(write=False)
    assert not hw.entry(3) & _PAGE_DIRTY
    hw.access(write=True)
    assert hw.mmu.walks == 2 and hw.entry(3) & _PAGE_DIRTY
    assert hw.cached().dirty
    hw.access(write=True)
    assert hw.mmu.walks == 2


def test_fault_on_walk_drops_cached_entry():
    hw = HandBuilt()
    hw.access(write=False)
    hw.set(3, hw.entry(3) & ~_PAGE_RW)  # the kernel write-protects but has not flushed yet
    hw.fault(write=True)  # clean cached entry: the write walks, and the walk faults
    assert hw.cached() is None


def test_tlb_evicts_least_recently_used_at_capacity():
    tlb = TLB(capacity=2)
    for vpn in (1, 2):
        tlb.fill(PCID, vpn, TLBEntry(vpn, True, False))
    assert tlb.lookup(PCID, 1) is not None  # 1 is now the most recently used
    tlb.fill(PCID, 3, TLBEntry(3, True, False))
    assert sorted(vpn for _, vpn in tlb.entries) == [1, 3]


def test_mmu_tlb_keeps_only_capacity_translations():
    hw = HandBuilt(tlb_capacity=1)
    other = hw.vaddr ^ (1 << 12)  # the neighbouring page, mapped by nothing
    hw.access()
    hw.phys.tables[hw.tables[-1], ARCHES["x86_64"].index(3, other)] = ARCHES["x86_64"].mk_entry(DATA + 1, FULL)
    hw.access(vaddr=other)
    hw.access()
    assert hw.mmu.walks == 3


def test_flush_pcid_drops_only_that_address_space():
    tlb = TLB()
    for pcid in (1, 2):
        for vpn in (10, 11):
            tlb.fill(pcid, vpn, TLBEntry(vpn, True, True))
    tlb.flush_pcid(1)
    assert sorted(tlb.entries) == [(2, 10), (2, 11)]


def test_flush_range_drops_pages_in_half_open_range_of_one_pcid():
    tlb = TLB()
    for pcid in (1, 2):
        for vpn in range(10, 14):
            tlb.fill(pcid, vpn, TLBEntry(vpn, True, True))
    tlb.flush_range(1, 11, 13)
    assert sorted(tlb.entries) == [(1, 10), (1, 13)] + [(2, vpn) for vpn in range(10, 14)]
