"""The third policy: tables shared as Phillips shares them, write-protected through the RW bit
of each sharer's upper entry (McCracken 2002, ODF 2021) instead of entry by entry."""

import ptsim
from ptsim.hardware.arch import _PAGE_RW

PAGE = 4096


def setup():
    m = ptsim.Machine(arch="x86_64", policy="upper_wp", ram=8 << 20)
    p = m.spawn()
    a = p.mmap(None, 1 << 20, "rw", False)
    for i in range(3):
        p.write(a + i * PAGE, b"page %d" % i)
    return m, p, a


def upper_entry(m, p, a):
    return m.kernel.entry(*m.kernel.pmd_slot(p.mm, a))


def test_fork_write_protects_upper_entries_and_no_pte():
    m, p, a = setup()
    before = m.counters.get("ptes_wrprotected", 0)
    c = p.fork()
    assert not upper_entry(m, p, a) & _PAGE_RW and not upper_entry(m, c, a) & _PAGE_RW
    assert m.kernel.follow_pte(p.mm, a) & _PAGE_RW, "the entries themselves stay writable"
    assert m.counters.get("ptes_wrprotected", 0) == before
    assert c.read(a, 6) == b"page 0" and c.minflt == 0  # reads go through (rule 3)
    m.check()


def test_write_unshares_and_write_protects_private_entries_of_both_copies():
    m, p, a = setup()
    c = p.fork()
    c.write(a, b"child")
    assert m.counters["tables_unshared"] == 1
    assert upper_entry(m, c, a) & _PAGE_RW and not upper_entry(m, p, a) & _PAGE_RW
    for q in (p, c):
        assert not m.kernel.follow_pte(q.mm, a + PAGE) & _PAGE_RW
    assert (p.read(a, 6), c.read(a, 6)) == (b"page 0", b"child0")
    m.check()


def test_last_sharer_takes_its_table_back_without_copying():
    m, p, a = setup()
    c = p.fork()
    c.exit()
    faults = p.minflt
    with m.trace() as events:
        p.write(a + PAGE, b"again")
    assert [e.action for e in events if e.action in ("reuse_table", "unshare_table", "copy_page")] == ["reuse_table"]
    assert upper_entry(m, p, a) & _PAGE_RW
    assert m.counters["fault_upper_wp"] == 1 and p.minflt == faults + 1
    m.check()


def test_sibling_keeps_sharing_after_parent_takes_a_copy():
    m, p, a = setup()
    c1, c2 = p.fork(), p.fork()
    table = m.kernel.slot_table(m.kernel.pmd_slot(c1.mm, a))
    p.write(a, b"parent")
    assert m.kernel.mem_map.refcount[table] == 2
    c1.write(a + 2 * PAGE, b"c1")
    c2.exit()
    c1.write(a, b"c1 again")  # the last sharer now: reuse the table, copy-on-write the page
    assert (p.read(a, 6), c1.read(a, 8)) == (b"parent", b"c1 again")
    m.check()
