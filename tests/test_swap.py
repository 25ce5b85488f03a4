"""Reclaim and swap-in, above all through shared tables (sharing rules 5 and 14, notebooks/rules-of-sharing.md)."""

import pytest

import ptsim

PAGE = 4096


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


def test_swap_out_through_shared_table_flushes_every_sharers_tlb():
    m, p, c, a = forked()
    assert cached(m, p, a) and cached(m, c, a)
    with m.trace() as events:
        assert m.swap_out(p, a)
    flushed = {e.pid for e in events if e.action == "flush_tlb" and e.func == "try_to_swap_out"}
    assert flushed == {p.pid, c.pid}
    assert not cached(m, p, a) and not cached(m, c, a)
    assert p.status()["VmSwap"] == c.status()["VmSwap"] == 4
    m.check()


def test_skipped_sharer_flush_lets_a_stale_tlb_read_a_freed_frame():
    m, p, c, a = forked()
    m.kernel.skip_tlb_flush.add("try_to_swap_out")
    assert m.swap_out(p, a)
    with pytest.raises(ptsim.InvariantError, match="stale TLB"):
        m.check()
    assert c.read(a, 5) == bytes(5)  # through the stale entry, into the freed (zeroed) frame


def test_swap_in_through_shared_table_unshares_first():
    m, p, c, a = forked()
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
    assert m.kernel.swap.count == {slot: 1}
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
