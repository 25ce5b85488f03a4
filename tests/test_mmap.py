"""Where mmap puts a mapping it is given no address for, in ptsim, in the oracle, and on the host.

Top-down, the highest free range that fits; a private mapping whose length is a whole number
of last-level table spans starts on such a span on 64-bit geometries, as Linux has done since
6.7 so that transparent huge pages can back it (limited to those lengths in 6.12).
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import re

import pytest

import ptsim
from ptsim.checking.oracle import Oracle

MiB = 1 << 20


def first_mapping(arch, length, shared=False):
    m = ptsim.Machine(arch=arch, policy="copy", ram=1 << 20)
    return m, m.spawn().mmap(None, length, "rw", shared)


@pytest.mark.parametrize("arch", ["x86_64", "toy"])
def test_private_mapping_of_whole_table_spans_starts_on_a_span(arch):
    span = ptsim.Machine(arch=arch, policy="copy", ram=1 << 20).arch.pte_span
    for tables in (1, 2, 3):
        m, a = first_mapping(arch, tables * span)
        assert a % span == 0
        assert m.arch.task_size - (a + tables * span) < span  # as high as it can go


@pytest.mark.parametrize("length", [MiB, 2 * MiB + 4096, 4 * MiB - 4096])
def test_other_lengths_take_the_top_of_the_highest_free_range(length):
    m, a = first_mapping("x86_64", length)
    assert a == m.arch.task_size - length


def test_map_shared_is_not_aligned():
    m, a = first_mapping("x86_64", 2 * MiB, shared=True)
    assert a == m.arch.task_size - 2 * MiB and a % (2 * MiB)


def test_i386_is_not_aligned():
    m, a = first_mapping("i386", 4 * MiB)
    assert m.arch.thp_mmap_align == 0 and a == m.arch.task_size - 4 * MiB


@pytest.mark.parametrize("room, aligned", [(2, False), (3, True)])
def test_aligned_placement_needs_room_for_one_span_more_else_takes_the_top(room, aligned):
    """Two spans go on a span boundary only in a free range of three (Linux pads the search)."""
    m = ptsim.Machine(arch="x86_64", policy="copy", ram=1 << 20)
    p, span, top, low = m.spawn(), m.arch.pte_span, m.arch.task_size, m.arch.mmap_min_addr
    p.mmap(low, top - room * span - low, "", False)  # free: the `room` spans below task_size
    a = p.mmap(None, 2 * span, "rw", False)
    assert (a % span == 0) == aligned
    assert a == ((top - 2 * span) & ~(span - 1) if aligned else top - 2 * span)


def test_no_free_range_is_a_value_error_naming_length():
    m = ptsim.Machine(arch="toy", policy="copy", ram=1 << 14)
    p = m.spawn()
    p.mmap(m.arch.mmap_min_addr, m.arch.task_size - m.arch.mmap_min_addr - 512, "rw", False)
    with pytest.raises(ValueError, match="length"):
        p.mmap(None, 1024, "rw", False)


@pytest.mark.parametrize("arch", ["x86_64", "i386", "toy"])
def test_oracle_places_every_mapping_where_the_kernel_does(arch):
    m = ptsim.Machine(arch=arch, policy="copy", ram=1 << 20)
    a, p = m.arch, m.spawn()
    oracle = Oracle(a.page_size, a.task_size, a.mmap_min_addr, a.thp_mmap_align)
    pid = oracle.spawn()
    span, page = a.pte_span, a.page_size
    for length, shared in [(span, False), (page, False), (2 * span, False), (span, True), (3 * page, False),
                           (span + page, False), (4 * span, False)]:
        assert p.mmap(None, length, "rw", shared) == oracle.mmap(pid, None, length, "rw", shared)
    m.check()


# -- the host's kernel -----------------------------------------------------------------------


def host_kernel_version() -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(match[1]), int(match[2])) if match else (0, 0)


SHMEM_THP = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"
HOST_CANNOT = (
    "the host is not Linux on x86-64" if (platform.system(), platform.machine()) != ("Linux", "x86_64")
    else f"the host kernel {platform.release()} predates 6.12, whose placement ptsim models"
    if host_kernel_version() < (6, 12) else None
)


PROT_NONE, MAP_FIXED_NOREPLACE = 0, 0x100000  # Python's mmap module has neither before 3.13
MAP_FAILED = (1 << 64) - 1


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def _map_fixed(libc, addr: int, length: int) -> bool:
    """Map [addr, addr+length) PROT_NONE if all of it is free; False, mapping nothing, if not."""
    got = libc.mmap(addr, length, PROT_NONE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0)
    if got is not None and got not in (addr, MAP_FAILED):  # a kernel that took it for a hint
        libc.munmap(got, length)
    return got == addr


def host_aligns(length: int, shared: bool, tries: int = 16) -> tuple[bool, list[int]]:
    """Whether this machine's kernel starts an anonymous mapping of `length`, given no address,
    on a 2 MiB boundary of its own accord; and the starts it gave on the way.

    One start on a boundary proves nothing: the free range the kernel took may simply end on
    one, and what ends it (another thread's stack or arena, a library, an aligned mapping the
    interpreter holds) is not the test's to choose. So a start on a boundary is kept mapped,
    with a page of ours (a fence) right below it, and the next mapping is made: where it lands
    in the free range under a fence, with nothing between, the end of that range is known and
    chosen off a boundary, so a kernel that does not align would have started it off one too.
    No: at the first start off a boundary, which an aligning kernel never gives.
    Yes: at the first start on a boundary in the free range right under a fence.
    """
    libc = _libc()
    span = 2 * MiB
    fence = mmap.PAGESIZE if (length + mmap.PAGESIZE) % span else 2 * mmap.PAGESIZE  # so fence - length is off
    flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | mmap.MAP_ANONYMOUS
    held, fences, starts = [], [], []
    try:
        for _ in range(tries):
            start = libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)
            if start in (None, MAP_FAILED):
                raise OSError(ctypes.get_errno(), f"mmap of {length} bytes")
            held.append((start, length))
            starts.append(start)
            if start % span:
                return False, starts
            # Under a fence: the range [start + length, fence) is still free (mapping it proves
            # it, and it is unmapped at the end), so the kernel's free range ended at the fence.
            for top in fences:
                if start + length < top and _map_fixed(libc, start + length, top - start - length):
                    held.append((start + length, top - start - length))
                    return True, starts
            if _map_fixed(libc, start - fence, fence):
                held.append((start - fence, fence))
                fences.append(start - fence)
        raise AssertionError(f"no answer after {tries} mappings of {length} bytes at {[hex(s) for s in starts]}")
    finally:
        for addr, n in held:
            libc.munmap(addr, n)


@pytest.mark.skipif(HOST_CANNOT is not None, reason=str(HOST_CANNOT))
@pytest.mark.parametrize("length, shared", [(2 * MiB, False), (64 * MiB, False), (4 * MiB + 4096, False),
                                            (MiB, False), (2 * MiB, True)])
def test_host_kernel_aligns_exactly_the_mappings_ptsim_aligns(length, shared):
    if shared and "[never]" not in open(SHMEM_THP).read():
        pytest.skip(f"{SHMEM_THP} is not [never]: the host may align MAP_SHARED memory, ptsim models the default")
    host_aligned, starts = host_aligns(length, shared)
    m, a = first_mapping("x86_64", length, shared)
    assert host_aligned == (a % (2 * MiB) == 0), f"the host's starts: {[hex(s) for s in starts]}"
