"""Reclaim and swap-in, above all through shared tables (sharing rules 5 and 14, notebooks/rules-of-sharing.md)."""

import pytest

import ptsim
from ptsim.kernel.fork import SharedPolicy
from ptsim.kernel.page import PG_PGTABLE

PAGE = 4096
HUGH = SharedPolicy(read_fault="unshare")


def forked(policy="shared"):
    """A parent with two written pages in one table, and its child; both TLBs warm."""
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=8 << 20)
    p = m.spawn()
    a = p.mmap(None, 1 << 20, "rw", False)
    p.write(a, b"hello")
    p.write(a + PAGE, b"world")
    c = p.fork()
    assert p.read(a, 5) == c.read(a, 5) == b"hello"
    return m, p, c, a


def leaf_table(m, p, addr):
    return m.kernel.slot_table(m.kernel.pmd_slot(p.mm, addr))


def cached(m, p, addr):
    return (p.mm.pcid, addr // PAGE) in m.kernel.tlb.entries


def test_swap_out_through_shared_table_flushes_every_tlb():
    m, p, c, a = forked()
    other = m.spawn()  # maps nothing of it, and loses its translations all the same
    b = other.mmap(None, PAGE, "rw", False)
    other.write(b, b"x")
    assert cached(m, p, a) and cached(m, c, a) and cached(m, other, b)
    with m.trace() as events:
        assert m.swap_out(p, a)
    assert [e.action for e in events if e.func == "try_to_swap_out"] == ["flush_tlb_all", "swap_out_page"]
    assert m.counters["tlb_flushes_all"] == 1
    assert not m.kernel.tlb.entries
    assert p.status()["VmSwap"] == c.status()["VmSwap"] == 4
    m.check()


def test_swap_out_through_private_table_flushes_only_its_mm():
    m, p, c, a = forked()
    p.write(a + 2 * PAGE, b"mine")  # the parent unshares
    with m.trace() as events:
        assert m.swap_out(p, a + 2 * PAGE)
    assert [(e.action, e.pid) for e in events if e.func == "try_to_swap_out"][0] == ("flush_tlb", p.pid)
    assert m.counters.get("tlb_flushes_all", 0) == 0 and cached(m, c, a)
    m.check()


def test_skipped_sharer_flush_lets_a_stale_tlb_read_a_freed_frame():
    m, p, c, a = forked()
    m.kernel.skip_tlb_flush.add("try_to_swap_out")
    assert m.swap_out(p, a)
    with pytest.raises(ptsim.InvariantError, match="stale TLB"):
        m.check()
    assert c.read(a, 5) == bytes(5)  # through the stale entry, into the freed (zeroed) frame


def test_swap_in_by_a_read_fills_the_shared_table_for_every_sharer():
    m, p, c, a = forked()
    table = leaf_table(m, c, a)
    m.swap_out(p, a)
    with m.trace() as events:
        assert c.read(a, 5) == b"hello"
    assert "fill_shared_table" in [e.action for e in events] and "unshare_table" not in [e.action for e in events]
    assert leaf_table(m, c, a) == leaf_table(m, p, a) == table
    assert (c.majflt, c.minflt) == (1, 0)
    assert not m.kernel.follow_pte(c.mm, a) & 2, "read-only: two mms reach it (sharing rule 2)"
    faults = (p.majflt, p.minflt)
    assert p.read(a, 5) == b"hello" and (p.majflt, p.minflt) == faults  # swapped in for both
    assert p.status()["VmSwap"] == c.status()["VmSwap"] == 0 and m.kernel.swap.count == {}
    m.check()


def test_swap_in_by_a_read_unshares_first_as_hugh_proposed():
    m, p, c, a = forked(HUGH)
    table = leaf_table(m, c, a)
    m.swap_out(p, a)
    before = m.counters.get("tables_unshared", 0)
    assert c.read(a, 5) == b"hello"
    assert m.counters["tables_unshared"] == before + 1
    assert leaf_table(m, c, a) != table and leaf_table(m, p, a) == table
    assert (c.majflt, c.minflt) == (1, 0)
    m.check()
    assert p.read(a, 5) == b"hello" and p.majflt == 1  # its own swap entry, its own page
    assert m.kernel.swap.count == {}
    m.check()


@pytest.mark.parametrize("policy", ["copy", "shared", "upper_wp"])
def test_swap_in_by_a_read_maps_a_page_nobody_else_holds_writable(policy):
    """Linux 6.x (do_swap_page): an exclusive page comes back writable when its VMA is, so the
    write after the read costs no fault."""
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=8 << 20)
    p = m.spawn()
    a = p.mmap(None, PAGE, "rw", False)
    p.write(a, b"hello")
    assert m.swap_out(p, a)
    assert p.read(a, 5) == b"hello" and (p.majflt, p.minflt) == (1, 1)
    p.write(a, b"HELLO")
    assert (p.majflt, p.minflt) == (1, 1)
    m.check()


def test_swap_in_of_a_slot_two_entries_hold_maps_it_read_only():
    m, p, c, a = forked("copy")
    p.write(a + 2 * PAGE, b"both")
    c.exit()
    c = p.fork()  # the page is mapped twice: it cannot go out
    p.write(a + 2 * PAGE, b"mine")  # now each maps a page of its own
    assert m.swap_out(c, a + 2 * PAGE)
    c2 = c.fork()  # the swap slot is held by two entries
    assert c.read(a + 2 * PAGE, 4) == b"both" and c.majflt == 1
    assert not m.kernel.follow_pte(c.mm, a + 2 * PAGE) & 2
    faults = c.minflt
    c.write(a + 2 * PAGE, b"BOTH")  # one fault: the page is this entry's alone, reused
    assert c.minflt == faults + 1 and m.counters["fault_wp_reuse"] >= 1
    assert c2.read(a + 2 * PAGE, 4) == b"both"
    m.check()


def test_copy_policy_pages_out_only_a_page_mapped_once():
    m, p, c, a = forked("copy")
    assert not m.swap_out(p, a)  # mapped by parent and child: needs the swap cache, not modelled
    c.exit()
    assert m.swap_out(p, a)
    assert p.read(a, 5) == b"hello" and p.majflt == 1
    m.check()


@pytest.mark.parametrize("policy", ["copy", "shared"])
def test_fork_shares_swap_slots_and_each_swap_in_drops_one(policy):
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=8 << 20)
    p = m.spawn()
    a = p.mmap(None, 1 << 20, "rw", False)
    p.write(a, b"swapped")
    assert m.swap_out(p, a)
    (slot,) = m.kernel.swap.count
    c = p.fork()
    m.check()
    assert c.status()["VmSwap"] == 4
    assert c.read(a, 7) == b"swapped"
    # Two entries held the slot after a copying fork; the shared table's one entry, now swapped
    # in, held it alone.
    assert m.kernel.swap.count == ({slot: 1} if policy == "copy" else {})
    p.write(a, b"mine")
    assert m.kernel.swap.count == {}
    assert (p.read(a, 7), c.read(a, 7)) == (b"mineped", b"swapped")
    m.check()


@pytest.mark.parametrize("call", ["exit", "munmap", "dontneed"])
def test_unmapping_a_swap_entry_frees_its_slot(call):
    m = ptsim.Machine(arch="x86_64", policy="copy", ram=8 << 20)
    p = m.spawn()
    a = p.mmap(None, 1 << 20, "rw", False)
    p.write(a, b"x")
    m.swap_out(p, a)
    {"exit": p.exit, "munmap": lambda: p.munmap(a, PAGE), "dontneed": lambda: p.madvise(a, PAGE, "dontneed")}[call]()
    assert m.kernel.swap.count == {} and m.kernel.swap.data == {}
    m.check()
    if call == "dontneed":
        assert p.read(a, 1) == b"\0"


def test_out_of_memory_in_swap_in_leaves_swap_as_it_was():
    m = ptsim.Machine(arch="toy", policy="shared", ram=32 * 64)
    p = m.spawn()
    a = p.mmap(None, 8 * 64, "rw", False)
    p.write(a, b"keep")
    m.swap_out(p, a)
    hog = p.mmap(None, 64 * 64, "rw", False)
    for i in range(64):  # take every frame: each write either completes or changes nothing
        try:
            p.write(hog + i * 64, b"h")
        except ptsim.OutOfMemory:
            pass
    assert m.free_frames == 0
    swap, status, majflt = dict(m.kernel.swap.count), p.status(), p.majflt
    with pytest.raises(ptsim.OutOfMemory):
        p.read(a, 4)
    assert (m.kernel.swap.count, p.status(), p.majflt) == (swap, status, majflt)
    m.check()
    p.munmap(hog, 64 * 64)
    assert p.read(a, 4) == b"keep" and p.majflt == majflt + 1
    m.check()
