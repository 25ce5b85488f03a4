"""The rules of sharing (notebooks/rules-of-sharing.md), one test each, on the observable state.

Rule 14 (reclaim through a shared table) and the swap-in half of rule 5 are in test_swap.py.
"""

from collections import Counter
from contextlib import contextmanager

import pytest

import ptsim
from ptsim.hardware.arch import _PAGE_PRESENT, _PAGE_RW
from ptsim.kernel import COUNTERS
from ptsim.kernel.fork import SharedPolicy
from ptsim.kernel.page import PG_FREE, PG_PGTABLE, ZERO_PFN

POLICIES = ["copy", "shared"]
RAM = {"x86_64": 8 << 20, "i386": 8 << 20, "toy": 1 << 14}


# -- helpers -----------------------------------------------------------------------------


def machine(policy="shared", arch="x86_64"):
    return ptsim.Machine(arch=arch, policy=policy, ram=RAM[arch])


def region(p, tables=1, at=4, prot="rw", shared=False):
    """Map `tables` last-level tables' worth of memory, starting on a table boundary."""
    span = p.machine.arch.pte_span
    return p.mmap(at * span, tables * span, prot, shared)


def page(p, a, i):
    return a + i * p.machine.arch.page_size


def tag(p, i):
    return b"pid%d page%d" % (p.pid, i)


def fill(p, a, pages):
    """Write a recognisable tag into each page; return the tags by page index."""
    tags = {}
    for i in pages:
        tags[i] = tag(p, i)
        p.write(page(p, a, i), tags[i])
    return tags


def reads(p, a, tags):
    return {i: p.read(page(p, a, i), len(t)) for i, t in tags.items()}


def leaf_table(p, addr):
    """The frame of the last-level table that maps `addr` for `p`, or None."""
    k = p.machine.kernel
    return k.slot_table(k.pmd_slot(p.mm, addr))


def use_count(m, frame):
    return int(m.kernel.mem_map.refcount[frame])


def mapcount(m, frame):
    return int(m.kernel.mem_map.mapcount[frame])


def pfn(p, addr):
    pa = p.translate(addr)
    return None if pa is None else pa >> p.machine.arch.page_shift


def pte(p, addr):
    return p.machine.kernel.follow_pte(p.mm, addr)


def table_entries(m, table):
    return m.kernel.phys.tables[table].copy()


def present_entries(m, table):
    row = m.kernel.phys.tables[table]
    return [int(e) for e in row if int(e) & _PAGE_PRESENT]


def tlb_keys(m, p):
    return {key for key in m.kernel.tlb.entries if key[0] == p.mm.pcid}


@contextmanager
def counted(m):
    """`with counted(m) as d:` leaves in d how much each counter rose during the block."""
    before, d = m.counters, Counter()
    yield d
    after = m.counters
    d.update({name: after.get(name, 0) - before.get(name, 0) for name in COUNTERS})


def upper_tables(m, mm):
    """Every table above the last level reachable from mm's root, the root included."""
    k, arch = m.kernel, m.arch
    found, frontier = [mm.pgd], [mm.pgd]
    for _level in range(arch.levels - 2):
        below = []
        for table in frontier:
            for entry in k.phys.tables[table]:
                if int(entry) & _PAGE_PRESENT:
                    below.append(k.entry_pfn(int(entry)))
        found += below
        frontier = below
    return found


HUGH = SharedPolicy(read_fault="unshare")  # Hugh Dickins' proposal: a read fault unshares too


def shared_setup(arch="x86_64", pages=(0, 1, 2), policy="shared"):
    """A parent with a written one-table region, forked once under a sharing policy."""
    m = machine(policy, arch)
    p = m.spawn()
    a = region(p)
    tags = fill(p, a, pages)
    c = p.fork()
    m.check()
    return m, p, c, a, tags


def index_of(events, action):
    return next(i for i, e in enumerate(events) if e.action == action)


# -- rule 1 ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "i386", "toy"])
@pytest.mark.parametrize("policy", POLICIES)
def test_use_count_equals_upper_entries_pointing_at_table(policy, arch):
    m = machine(policy, arch)
    p = m.spawn()
    a = region(p, tables=2)
    fill(p, a, [0, 1, m.arch.entries])  # two pages in the first table, one in the second
    c1 = p.fork()
    c2 = c1.fork()
    p.write(a, b"unshare")
    m.check()
    k, pointers = m.kernel, Counter()
    for proc in (p, c1, c2):
        for base in (a, a + m.arch.pte_span):
            slot = k.pmd_slot(proc.mm, base)
            assert k.entry(*slot) & _PAGE_RW, "a shared table's upper entry stays writable"
            pointers[k.slot_table(slot)] += 1
    assert {t: use_count(m, t) for t in pointers} == dict(pointers)
    # shared: the unwritten table by all three, the written one by the children, the parent's copy
    assert sorted(pointers.values()) == ([1, 2, 3] if policy == "shared" else [1] * 6)


# -- rule 2 ------------------------------------------------------------------------------


def test_sharing_write_protects_every_private_entry_before_count_reaches_two():
    m = machine()
    p = m.spawn()
    a = region(p)
    fill(p, a, [0, 1, 2])
    table = leaf_table(p, a)
    assert all(e & _PAGE_RW for e in present_entries(m, table))
    with counted(m) as d:
        c = p.fork()
    m.check()
    assert leaf_table(c, a) == table and use_count(m, table) == 2
    assert d["ptes_wrprotected"] == 3
    assert not any(e & _PAGE_RW for e in present_entries(m, table))


@pytest.mark.parametrize("wrprotect", SharedPolicy.WRPROTECTS)
def test_every_sharing_fork_or_only_the_first_write_protects_to_the_same_entries(wrprotect):
    """Phillips' patch write-protects at every fork that shares a table; his 29 Jan proposal
    only when the count goes 1 -> 2. A shared table's private entries are read-only already, so
    the entries end the same; the patch only makes a second fork pay the pass again."""
    m = machine(SharedPolicy(wrprotect=wrprotect))
    p = m.spawn()
    a = region(p)
    fill(p, a, [0, 1, 2])
    c = p.fork()
    table, entries = leaf_table(p, a), table_entries(m, leaf_table(p, a))
    with counted(m) as d, m.trace() as events:
        c.fork()
    m.check()
    assert (table_entries(m, table) == entries).all() and d["ptes_wrprotected"] == 0
    passes = [e for e in events if e.action == "wrprotect_table"]
    assert [e.table for e in passes] == ([table] if wrprotect == "every_fork" else [])


def test_exclusive_at_fork_clears_every_shared_pages_exclusive_flag():
    m = machine(SharedPolicy(exclusive_at_fork=True))
    p = m.spawn()
    a = region(p)
    fill(p, a, [0, 1, 2])
    frames = [pfn(p, page(p, a, i)) for i in (0, 1, 2)]
    assert m.kernel.mem_map.anon_exclusive[frames].all()
    c = p.fork()
    assert not m.kernel.mem_map.anon_exclusive[frames].any()
    c.exit()
    faults = p.minflt
    p.write(a, b"mine")  # the last mapper reuses the page all the same
    assert p.minflt == faults + 1 and pfn(p, a) == frames[0]
    m.check()


# -- rule 3 ------------------------------------------------------------------------------


def test_read_through_shared_table_neither_faults_nor_unshares():
    m, p, c, a, tags = shared_setup()
    table, minflt = leaf_table(c, a), c.minflt
    with counted(m) as d:
        assert reads(c, a, tags) == tags
        assert reads(p, a, tags) == tags
    m.check()
    assert c.minflt == minflt
    assert +d == Counter(), "no fault, no unshare, no flush"
    assert leaf_table(c, a) == leaf_table(p, a) == table and use_count(m, table) == 2


# -- rule 4 ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "i386", "toy"])
def test_write_to_shared_table_unshares_then_copies_page(arch):
    m, p, c, a, tags = shared_setup(arch)
    old, page0 = leaf_table(p, a), pfn(p, a)
    others = [pfn(p, page(p, a, i)) for i in (1, 2)]
    status = p.status()
    with counted(m) as d, m.trace() as events:
        p.write(a, b"new")
    m.check()
    new = leaf_table(p, a)
    assert new != old and leaf_table(c, a) == old
    assert use_count(m, old) == 1 and use_count(m, new) == 1
    # The copy took a reference on every page; the copy-on-write then gave one back.
    assert [(use_count(m, f), mapcount(m, f)) for f in others] == [(2, 2), (2, 2)]
    assert pfn(p, a) != page0 and pfn(c, a) == page0 and use_count(m, page0) == 1
    assert p.status() == status, "the shared table was already counted in the parent's rss"
    assert (d["tables_unshared"], d["ptes_copied"], d["pages_copied"]) == (1, 3, 1)
    assert index_of(events, "unshare_table") < index_of(events, "copy_page")
    assert c.read(a, len(tags[0])) == tags[0]


def test_after_child_cow_tables_differ_only_at_the_copied_entry():
    """The seed: the child's table points at its fresh copy, the parent's at the original."""
    m, p, c, a, tags = shared_setup()
    original = pfn(p, page(p, a, 1))
    c.write(page(c, a, 1), b"child")
    m.check()
    mine, theirs = table_entries(m, leaf_table(c, a)), table_entries(m, leaf_table(p, a))
    k = m.kernel
    differ = [i for i in range(m.arch.entries) if k.entry_pfn(int(mine[i])) != k.entry_pfn(int(theirs[i]))]
    assert differ == [1]
    assert pfn(p, page(p, a, 1)) == original != pfn(c, page(c, a, 1))


# -- rule 5 ------------------------------------------------------------------------------


def test_read_fault_on_empty_entry_fills_the_shared_table_for_every_sharer():
    m, p, c, a, _ = shared_setup()
    table, empty = leaf_table(p, a), page(p, a, 7)
    with counted(m) as d, m.trace() as events:
        assert p.read(empty, 4) == bytes(4)
    m.check()
    assert (d["tables_unshared"], d["fault_zero"]) == (0, 1)
    assert index_of(events, "fill_shared_table") < index_of(events, "map_zero_page")
    assert leaf_table(p, a) == leaf_table(c, a) == table and use_count(m, table) == 2
    assert pte(c, empty) == pte(p, empty) and pfn(c, empty) == ZERO_PFN
    faults = c.minflt
    assert c.read(empty, 4) == bytes(4) and c.minflt == faults, "the sibling finds it mapped"


def test_read_fault_on_empty_entry_unshares_first_as_hugh_proposed():
    m, p, c, a, _ = shared_setup(policy=HUGH)
    old, empty = leaf_table(p, a), page(p, a, 7)
    with counted(m) as d, m.trace() as events:
        assert p.read(empty, 4) == bytes(4)
    m.check()
    assert d["tables_unshared"] == 1 and d["fault_zero"] == 1
    assert index_of(events, "unshare_table") < index_of(events, "map_zero_page")
    assert pfn(p, empty) == ZERO_PFN and leaf_table(p, a) != old
    assert pte(c, empty) == 0, "the other sharer's table did not get the entry"
    faults = c.minflt
    assert c.read(empty, 4) == bytes(4) and c.minflt == faults + 1


@pytest.mark.parametrize("read_fault", SharedPolicy.READ_FAULTS)
def test_read_fault_on_map_shared_page_counts_it_once_per_entry(read_fault):
    """What mapcount, refcount and VmRSS mean after a read fills a shared table: the page has
    one entry (mapcount 1, refcount 2 with its page-cache slot), and every mm that reaches the
    entry counts it in VmRSS. Unsharing first gives the page one entry per mm that faulted."""
    m = machine(SharedPolicy(read_fault=read_fault))
    p = m.spawn()
    a = region(p, shared=True)
    p.write(a, b"shared")  # page 0 in the parent's table, before the fork
    c = p.fork()
    rss = c.status()["VmRSS"]
    assert c.read(page(c, a, 5), 1) == bytes(1)  # a new shmem page, mapped by the child's read
    frame = pfn(c, page(c, a, 5))
    m.check()
    if read_fault == "fill":
        assert pfn(p, page(p, a, 5)) == frame and (mapcount(m, frame), use_count(m, frame)) == (1, 2)
        assert p.status()["VmRSS"] == c.status()["VmRSS"] == rss + 4
        faults = p.minflt
        assert p.read(page(p, a, 5), 1) == bytes(1) and p.minflt == faults
    else:
        assert pfn(p, page(p, a, 5)) is None and (mapcount(m, frame), use_count(m, frame)) == (1, 2)
        assert (p.status()["VmRSS"], c.status()["VmRSS"]) == (rss, rss + 4)
        faults = p.minflt
        assert p.read(page(p, a, 5), 1) == bytes(1) and p.minflt == faults + 1
        assert (mapcount(m, frame), use_count(m, frame)) == (2, 3)
    m.check()


@pytest.mark.parametrize("policy", ["shared", "upper_wp"])
def test_read_fault_in_a_new_mapping_over_part_of_a_shared_table_fills_no_other_mm(policy):
    """A sharer's VMAs may come to differ inside a shared table (here an mmap into a hole):
    it unshares first, or its read fault would put an entry in the other's memory."""
    m = machine(policy)
    p = m.spawn()
    a = p.mmap(4 * m.arch.pte_span, m.arch.pte_span // 2, "rw", False)  # half a table
    p.write(a, b"x")
    c = p.fork()
    hole = a + m.arch.pte_span // 2
    with counted(m) as d:
        c.mmap(hole, m.arch.page_size, "r", True)
    assert d["tables_unshared"] == 1 and leaf_table(c, a) != leaf_table(p, a)
    c.read(hole, 1)
    assert pte(p, hole) == 0
    m.check()


def test_mprotect_of_an_empty_part_of_a_shared_table_unshares_first():
    m, p, c, a, _ = shared_setup()
    with counted(m) as d:
        c.mprotect(page(c, a, 8), m.arch.page_size, "r")  # no entry there yet
    assert d["tables_unshared"] == 1
    p.read(page(p, a, 8), 1)  # a fill the child must not see as writable or at all
    assert pte(c, page(c, a, 8)) == 0
    m.check()


@pytest.mark.parametrize("policy", ["shared", "upper_wp"])
def test_machine_takes_a_policy_object_with_its_switches(policy):
    kind = type(ptsim.POLICIES[policy])
    m = machine(kind(read_fault="unshare", wrprotect="every_fork"))
    assert m.policy == policy and m.kernel.policy.read_fault == "unshare"
    with pytest.raises(ValueError, match="read_fault"):
        kind(read_fault="sometimes")
    with pytest.raises(ValueError, match="wrprotect"):
        kind(wrprotect="never")


# -- rule 6 ------------------------------------------------------------------------------


def test_last_sharer_reuses_table_without_copying():
    m, p, c, a, tags = shared_setup()
    table = leaf_table(c, a)
    p.write(a, b"parent")  # the parent unshares; the child is left alone on the table
    assert use_count(m, table) == 1
    assert not any(e & _PAGE_RW for e in present_entries(m, table)), "pages the parent still maps are read-only"
    with counted(m) as d:
        c.write(page(c, a, 1), b"child")
    m.check()
    assert leaf_table(c, a) == table
    assert (d["tables_unshared"], d["tables_allocated"], d["pages_copied"]) == (0, 0, 1)
    assert p.read(page(p, a, 1), len(tags[1])) == tags[1]


# -- rule 7 ------------------------------------------------------------------------------


def test_two_children_go_on_sharing_table_after_parent_unshares():
    m, p, c1, a, tags = shared_setup()
    c2 = p.fork()
    table, original = leaf_table(p, a), pfn(p, a)
    assert use_count(m, table) == 3
    p.write(a, b"parent")
    m.check()
    assert leaf_table(c1, a) == leaf_table(c2, a) == table != leaf_table(p, a)
    assert use_count(m, table) == 2
    assert reads(c1, a, tags) == reads(c2, a, tags) == tags
    with counted(m) as d:
        c1.write(a, b"first child")
    m.check()
    assert d["tables_unshared"] == 1 and d["pages_copied"] == 1
    assert leaf_table(c2, a) == table and use_count(m, table) == 1
    with counted(m) as d:
        c2.write(a, b"second child")
    m.check()
    assert (d["tables_unshared"], d["pages_copied"], d["pages_reused"]) == (0, 0, 1)
    assert pfn(c2, a) == original, "the last mapper of the original page keeps it"
    assert [x.read(a, 6) for x in (p, c1, c2)] == [b"parent", b"first ", b"second"]


# -- rule 8 ------------------------------------------------------------------------------


def test_fork_of_process_with_shared_table_only_raises_count():
    m, p, c, a, tags = shared_setup()
    table = leaf_table(p, a)
    before = table_entries(m, table)
    with counted(m) as d:
        g = c.fork()  # forked from a sharer that is not the table's first user
    m.check()
    assert leaf_table(g, a) == table and use_count(m, table) == 3
    assert (table_entries(m, table) == before).all()
    assert (d["tables_shared"], d["ptes_copied"], d["ptes_wrprotected"], d["pages_allocated"]) == (1, 0, 0, 0)
    assert d["tables_allocated"] == m.arch.levels - 2, "only the child's own upper tables"
    assert reads(g, a, tags) == tags


# -- rule 9 ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_only_last_sharer_to_drop_table_frees_it_and_its_pages(arch):
    m = machine("shared", arch)
    free = m.free_frames
    p = m.spawn()
    a = region(p)
    fill(p, a, [0, 1, 2])
    c1, c2 = p.fork(), p.fork()
    table, pages = leaf_table(p, a), [pfn(p, page(p, a, i)) for i in range(3)]
    for proc, left in ((c1, 2), (p, 1)):
        with counted(m) as d:
            proc.exit()
        m.check()
        assert use_count(m, table) == left and d["pages_freed"] == 0
        assert [use_count(m, f) for f in pages] == [1, 1, 1]
    with counted(m) as d:
        c2.exit()
    m.check()
    assert d["pages_freed"] == 3
    assert m.kernel.mem_map.kind[table] == PG_FREE and m.free_frames == free


# -- rule 10 -----------------------------------------------------------------------------


@pytest.mark.parametrize("drop", ["exit", "munmap"])
def test_dropping_whole_shared_table_decrements_flushes_own_tlb_and_touches_nothing_else(drop):
    m, p, c, a, tags = shared_setup()
    table = leaf_table(p, a)
    assert reads(p, a, tags) == tags  # warm the parent's TLB
    before = (table_entries(m, table), tlb_keys(m, p), [use_count(m, pfn(p, page(p, a, i))) for i in tags])
    with counted(m) as d, m.trace() as events:
        if drop == "exit":
            c.exit()
        else:
            c.munmap(a, m.arch.pte_span)
    m.check()
    assert use_count(m, table) == 1 and m.kernel.mem_map.kind[table] == PG_PGTABLE
    after = (table_entries(m, table), tlb_keys(m, p), [use_count(m, pfn(p, page(p, a, i))) for i in tags])
    assert (after[0] == before[0]).all() and after[1:] == before[1:]
    assert {e.pid for e in events} == {c.pid}
    assert any(e.action == "drop_shared_table" and e.table == table for e in events)
    assert any(e.action == "flush_tlb" for e in events)
    assert d["pages_freed"] == 0 and d["tables_unshared"] == 0
    assert reads(p, a, tags) == tags


# -- rule 11 -----------------------------------------------------------------------------

PARTIAL_CHANGES = {
    "munmap": lambda p, addr, n: p.munmap(addr, n),
    "mprotect": lambda p, addr, n: p.mprotect(addr, n, "r"),
    "madvise": lambda p, addr, n: p.madvise(addr, n, "dontneed"),
}


@pytest.mark.parametrize("change", sorted(PARTIAL_CHANGES))
def test_partial_change_of_shared_table_unshares_first(change):
    m, p, c, a, tags = shared_setup()
    table = leaf_table(c, a)
    before = (table_entries(m, table), [pfn(c, page(c, a, i)) for i in tags])
    with counted(m) as d, m.trace() as events:
        PARTIAL_CHANGES[change](p, a, m.arch.page_size)
    m.check()
    assert d["tables_unshared"] == 1
    assert index_of(events, "unshare_table") < min(i for i, e in enumerate(events) if e.action in ("zap_ptes", "change_ptes"))
    assert leaf_table(p, a) != table and leaf_table(c, a) == table
    assert (table_entries(m, table) == before[0]).all()
    assert [pfn(c, page(c, a, i)) for i in tags] == before[1] and reads(c, a, tags) == tags


# -- rule 12 -----------------------------------------------------------------------------


def test_unshare_copies_entries_of_every_vma_in_table():
    m = machine()
    p = m.spawn()
    base, size = 4 * m.arch.pte_span, 8 * m.arch.page_size
    private = p.mmap(base, size, "rw")
    shmem = p.mmap(base + size, size, "rw", shared=True)
    readonly = p.mmap(base + 2 * size, size, "rw")
    for addr in (private, shmem, readonly):
        p.write(addr, b"x")
    p.mprotect(readonly, size, "r")  # the table now holds three VMAs of three kinds
    with counted(m) as d:
        c = p.fork()
    m.check()
    assert d["tables_shared"] == 1, "three VMAs, one table, one use count"
    with counted(m) as d:
        p.write(private, b"y")
    m.check()
    assert d["tables_unshared"] == 1 and d["ptes_copied"] == 3
    assert leaf_table(p, private) != leaf_table(c, private)
    assert [pfn(p, x) for x in (shmem, readonly)] == [pfn(c, x) for x in (shmem, readonly)]
    assert use_count(m, pfn(p, shmem)) == 3, "two entries and the page cache"


def test_vma_spanning_two_tables_unshares_only_the_written_one():
    m = machine()
    p = m.spawn()
    a = region(p, tables=2)
    second = a + m.arch.pte_span
    fill(p, a, [0, m.arch.entries])
    c = p.fork()
    with counted(m) as d:
        p.write(a, b"y")
    m.check()
    assert d["tables_unshared"] == 1
    assert leaf_table(p, a) != leaf_table(c, a) and leaf_table(p, second) == leaf_table(c, second)
    assert use_count(m, leaf_table(c, second)) == 2


# -- rule 13 -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_map_shared_write_after_fork_is_seen_by_every_mapper_not_copied(policy):
    m = machine(policy)
    p = m.spawn()
    a = region(p, shared=True)
    p.write(a, b"before")
    c = p.fork()
    with counted(m) as d:
        c.write(a, b"child!")
    m.check()
    assert p.read(a, 6) == b"child!"
    assert pfn(p, a) == pfn(c, a)
    assert d["pages_copied"] == 0 and d["fault_wp_copy"] == 0


def test_write_fault_in_shared_table_of_map_shared_unshares_but_writes_shared_page():
    m = machine("shared")
    p = m.spawn()
    a = region(p, shared=True)
    p.write(a, b"before")
    c = p.fork()
    table = leaf_table(p, a)
    assert pte(c, a) & _PAGE_RW, "sharing leaves MAP_SHARED entries writable"
    with counted(m) as d:
        c.write(a, b"no fault")  # a present writable entry: the write needs no fault
    assert +d == Counter() and leaf_table(c, a) == table
    with counted(m) as d:
        c.write(page(c, a, 1), b"fault")  # an empty entry: the fault must install one
    m.check()
    assert d["tables_unshared"] == 1 and d["fault_shmem"] == 1 and d["pages_copied"] == 0
    assert leaf_table(c, a) != table and pte(p, page(p, a, 1)) == 0
    assert p.read(page(p, a, 1), 5) == b"fault" and pfn(p, page(p, a, 1)) == pfn(c, page(c, a, 1))


# -- rule 15 -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "toy"])
@pytest.mark.parametrize("policy", POLICIES)
def test_read_of_untouched_private_page_maps_zero_page_then_write_allocates(policy, arch):
    m = machine(policy, arch)
    p = m.spawn()
    a = region(p)
    with counted(m) as d:
        assert p.read(a, 8) == bytes(8)
    m.check()
    assert pfn(p, a) == ZERO_PFN and not pte(p, a) & _PAGE_RW
    assert (d["fault_zero"], d["pages_allocated"], p.minflt, p.status()["VmRSS"]) == (1, 0, 1, 0)
    with counted(m) as d:
        p.write(a, b"data")
    m.check()
    assert pfn(p, a) != ZERO_PFN and pte(p, a) & _PAGE_RW
    assert (d["pages_allocated"], d["pages_copied"], p.minflt) == (1, 0, 2)
    assert p.status()["VmRSS"] == m.arch.page_size // 1024
    assert not m.kernel.phys.frame_bytes(ZERO_PFN).any()


# -- rule 16 -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_cow_fault_on_page_mapped_nowhere_else_reuses_it_and_counts_fault(policy):
    m = machine(policy)
    p = m.spawn()
    a = region(p)
    p.write(a, b"old")
    c = p.fork()
    c.exit()
    frame, minflt = pfn(p, a), p.minflt
    assert not pte(p, a) & _PAGE_RW
    with counted(m) as d:
        p.write(a, b"new")
    m.check()
    assert pfn(p, a) == frame and p.minflt == minflt + 1
    assert (d["pages_reused"], d["fault_wp_reuse"], d["pages_copied"], d["pages_allocated"]) == (1, 1, 0, 0)


# -- rule 17 -----------------------------------------------------------------------------


def forked_with_warm_tlb(policy, skip=()):
    """A parent that wrote a page (its TLB holds a writable entry), forked with flush sites skipped."""
    m = machine(policy)
    m.kernel.skip_tlb_flush.update(skip)
    p = m.spawn()
    a = region(p)
    p.write(a, b"before")
    return m, p, a


@pytest.mark.parametrize("policy", POLICIES)
def test_fork_flushes_forking_process_tlb(policy):
    m, p, a = forked_with_warm_tlb(policy)
    assert tlb_keys(m, p)
    with m.trace() as events:
        p.fork()
    m.check()
    assert not tlb_keys(m, p)
    assert any(e.func == "dup_mmap" and e.action == "flush_tlb" and e.pid == p.pid for e in events)


@pytest.mark.parametrize("policy", POLICIES)
def test_skipped_fork_flush_lets_parent_write_into_childs_page(policy):
    m, p, a = forked_with_warm_tlb(policy, skip={"dup_mmap"})
    c = p.fork()
    p.write(a, b"leaked")  # through the stale writable TLB entry: no fault, no copy
    assert c.read(a, 6) == b"leaked"
    with pytest.raises(ptsim.InvariantError, match="TLB lets"):
        m.check()


def test_unshare_flushes_faulting_process_tlb_only():
    m, p, c, a, tags = shared_setup()
    reads(p, a, tags)
    reads(c, a, tags)
    theirs = tlb_keys(m, c)
    with m.trace() as events:
        p.write(a, b"new")
    m.check()
    flushes = [e for e in events if e.action == "flush_tlb" and e.func == "unshare_pte_table"]
    assert [e.pid for e in flushes] == [p.pid]
    assert tlb_keys(m, c) == theirs


def test_cow_flush_event_counts_the_one_page_it_flushes():
    m, p, c, a, _ = shared_setup()
    with m.trace() as events:
        p.write(a, b"new")
    [flush] = [e for e in events if e.func == "do_wp_page" and e.action == "flush_tlb"]
    assert flush.count == 1


def test_skipped_mprotect_flush_leaves_tlb_allowing_write_to_read_only_page():
    m, p, a = forked_with_warm_tlb("copy", skip={"change_protection"})
    p.mprotect(a, m.arch.page_size, "r")
    assert not pte(p, a) & _PAGE_RW
    # The CPU believes its TLB: a store goes through without a fault.
    assert m.kernel.mmu.access(p.mm.pgd, p.mm.pcid, a, write=True) == p.translate(a)
    with pytest.raises(ptsim.InvariantError, match="TLB lets"):
        m.check()


def test_skipped_munmap_flush_lets_write_reach_page_freed_to_another_process():
    m, p, a = forked_with_warm_tlb("copy", skip={"do_munmap"})
    victim = page(p, a, 1)
    p.write(victim, b"mine")
    q = m.spawn()
    b = region(q, at=8)
    q.write(b, b"q's tables are in place")
    p.munmap(victim, m.arch.page_size)  # frees the page, keeps p's table (page 0 is still mapped)
    q.write(page(q, b, 1), b"q's secret")  # q gets the frame p just gave back
    p.mmap(victim, m.arch.page_size)
    p.write(victim, b"p's scribble")  # through p's stale TLB entry, into q's page
    assert q.read(page(q, b, 1), 12) == b"p's scribble"
    with pytest.raises(ptsim.InvariantError, match="stale TLB entry"):
        m.check()


def test_skipped_exit_flush_leaves_tlb_entries_of_a_dead_address_space():
    m, p, a = forked_with_warm_tlb("shared", skip={"exit_mmap"})
    p.exit()
    with pytest.raises(ptsim.InvariantError, match="dead address space"):
        m.check()


# -- rule 18 -----------------------------------------------------------------------------


def test_fork_then_exec_only_drops_counts():
    m = machine("shared")
    p = m.spawn()
    a = region(p, tables=2)
    tags = fill(p, a, [0, 1, m.arch.entries])
    tables = [leaf_table(p, a), leaf_table(p, a + m.arch.pte_span)]
    with counted(m) as d:
        c = p.fork()
        c.exec()
    m.check()
    nothing = ("ptes_copied", "tables_unshared", "pages_copied", "pages_allocated", "pages_freed")
    assert [d[name] for name in nothing] == [0] * len(nothing)
    assert [use_count(m, t) for t in tables] == [1, 1]
    assert c.status()["VmSize"] == 0
    with counted(m) as d:
        p.write(a, b"after exec")  # the parent is alone again: no unshare, no copy
    m.check()
    assert (d["tables_unshared"], d["pages_copied"], d["pages_reused"]) == (0, 0, 1)
    untouched = {i: t for i, t in tags.items() if i != 0}
    assert reads(p, a, untouched) == untouched


# -- rule 19 -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["x86_64", "i386", "toy"])
def test_upper_level_tables_are_never_shared(arch):
    m = machine("shared", arch)
    p = m.spawn()
    a = region(p, tables=2)
    fill(p, a, [0, m.arch.entries])
    procs = [p, p.fork()]
    procs.append(procs[1].fork())
    procs[2].write(a, b"unshare")
    m.check()
    uppers = [t for proc in procs for t in upper_tables(m, proc.mm)]
    assert len(uppers) == len(set(uppers)), "no two processes reach the same upper table"
    assert [use_count(m, t) for t in uppers] == [1] * len(uppers)
    assert use_count(m, leaf_table(p, a + m.arch.pte_span)) == 3, "the last level is shared"
