"""The read-only inspectors of ptsim.peek, each held to a fact found another way: a walk of the
tables done here from CR3, what an access then does (a fault, a SIGSEGV, a major fault), the
frames taken from the free list, the processes' own fault counts."""

import re

import numpy as np
import pytest

import ptsim
from ptsim.hardware.arch import _PAGE_PRESENT
from ptsim.kernel import COUNTERS
from ptsim.kernel.page import PG_PGTABLE
from ptsim.peek import counters_gained, list_tables, pte_table, show_table, table_pages, use_count

TOY = ptsim.ARCHES["toy"]
PAGE, SPAN = TOY.page_size, TOY.pte_span
A = 2 * SPAN  # on a table boundary


def toy(policy="shared"):
    return ptsim.Machine(arch="toy", policy=policy, ram=1 << 14)


def walked_table(p, addr):
    """The last-level table for `addr`, found by reading p's tables from its root, level by
    level, as the MMU does; None where an upper entry is not present."""
    k, arch = p.machine.kernel, p.machine.arch
    table = p.mm.pgd
    for level in range(arch.levels - 1):
        entry = int(k.phys.tables[table, arch.index(level, addr)])
        if not entry & _PAGE_PRESENT:
            return None
        table = (entry & arch.pfn_mask) >> 12
    return table


def three_sharers(policy="shared"):
    m = toy(policy)
    p = m.spawn()
    a = p.mmap(addr=A, length=SPAN)
    p.write(a, b"x")
    return m, p, p.fork(), p.fork(), a


def state(m):
    """Everything a look into the machine could disturb."""
    k = m.kernel
    return (k.phys.tables.copy(), k.mem_map.refcount.copy(), k.mem_map.mapcount.copy(), k.mem_map.kind.copy(),
            m.counters, m.free_frames, list(k.tlb.entries.items()))


def same(a, b):
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


# -- pte_table and use_count ---------------------------------------------------------------


@pytest.mark.parametrize("policy", ["copy", "shared", "upper_wp"])
def test_pte_table_is_the_table_the_walk_from_cr3_reaches(policy):
    m, p, c1, c2, a = three_sharers(policy)
    c1.write(a + PAGE, b"1")
    for q in (p, c1, c2):
        for addr in (a, a + 3 * PAGE, a + SPAN, 0x40):
            assert pte_table(q, addr) == walked_table(q, addr)
        assert m.kernel.mem_map.kind[pte_table(q, a)] == PG_PGTABLE
    assert pte_table(p, a + SPAN) is None  # nothing mapped there: no table
    assert pte_table(c1, a) != pte_table(p, a)  # c1's write gave it a table of its own
    assert (pte_table(c2, a) == pte_table(p, a)) == (policy != "copy")


@pytest.mark.parametrize("policy, counts", [("shared", [3, 2, 1]), ("upper_wp", [3, 2, 1]), ("copy", [1, 1, 1])])
def test_use_count_counts_the_upper_entries_pointing_at_the_table(policy, counts):
    m, p, c1, c2, a = three_sharers(policy)
    alive = [p, c1, c2]
    seen = []
    for leaving in (None, c1, c2):
        if leaving is not None:
            leaving.exit()
            alive.remove(leaving)
        frame = walked_table(p, a)
        pointers = sum(walked_table(q, a) == frame for q in alive)
        assert use_count(p, a) == pointers
        seen.append(use_count(p, a))
    assert seen == counts
    assert use_count(p, a + SPAN) == 0


def test_use_count_follows_the_fork_and_unshare_counters():
    m, p, c1, c2, a = three_sharers()
    assert m.counters["tables_shared"] == use_count(p, a) - 1 == 2
    c1.write(a, b"1")  # c1 unshares: a table of its own, the old one's count down by one
    assert m.counters["tables_unshared"] == 1
    assert use_count(c1, a) == 1 and use_count(p, a) == use_count(c2, a) == 2


# -- show_table ----------------------------------------------------------------------------


LINE = re.compile(r"  \[ *(\d+)\] (0x[0-9a-f]+)  (?:-> frame +(\d+)  (RW|read-only|PROT_NONE)|swap slot (\d+))$")


def parsed(text):
    head, *lines = text.splitlines()
    return head, {int(m[1]): m.groups()[1:] for m in map(LINE.match, lines)}


def test_show_table_lists_what_each_entry_lets_the_process_do():
    m = toy()
    p = m.spawn()
    a = p.mmap(addr=A, length=SPAN)
    p.write(a, b"A" * 3 * PAGE)  # pages 0-2 written
    p.read(a + 4 * PAGE, 1)  # page 4: the zero page
    c = p.fork()
    p.write(a + PAGE, b"p")  # the parent unshares and copies page 1: RW in its own table
    c.write(a + 3 * PAGE, b"D")  # a page only the child's table maps...
    assert m.swap_out(c, a + 3 * PAGE)  # ...so reclaim can page it out
    c.mprotect(a + 4 * PAGE, PAGE, "")  # page 4: PROT_NONE in the child

    head, rows = parsed(show_table(c, a + 5))
    assert head == f"pid {c.pid}, {a:#x}-{a + SPAN - 1:#x}: pte table in frame {walked_table(c, a)}, use count 1"
    assert sorted(rows) == [0, 1, 2, 3, 4]  # the empty entries are left out
    assert [c.translate(a + i * PAGE) for i in (5, 6, 7)] == [None] * 3
    assert [rows[i][2] for i in (0, 1, 2, 4)] == ["read-only"] * 3 + ["PROT_NONE"]
    for i in (0, 1, 2, 4):
        assert int(rows[i][1]) * PAGE == c.translate(a + i * PAGE)
    for i in (0, 1, 2):
        faults = c.minflt
        c.write(a + i * PAGE, b"c")  # listed read-only: the write faults
        assert c.minflt == faults + 1
    with pytest.raises(ptsim.SegmentationFault):
        c.read(a + 4 * PAGE, 1)  # listed PROT_NONE
    assert rows[3][1] is None and int(rows[3][3]) >= 1 and c.mm.swapents == 1
    majflt = c.majflt
    assert c.read(a + 3 * PAGE, 1) == b"D" and c.majflt == majflt + 1  # the swap entry: a major fault

    head, rows = parsed(show_table(p, a))
    assert rows[1][2] == "RW"
    faults = p.minflt
    p.write(a + PAGE + 1, b"q")  # listed RW: no fault
    assert p.minflt == faults
    assert show_table(c, a + SPAN) == f"pid {c.pid}, {a + SPAN:#x}-{a + 2 * SPAN - 1:#x}: no pte table"


def test_show_table_of_a_shared_table_prints_one_table_for_every_sharer():
    m, p, c1, c2, a = three_sharers()
    texts = [show_table(q, a) for q in (p, c1, c2)]
    assert len({t.split(": ", 1)[1] for t in texts}) == 1
    assert texts[0].splitlines()[0].endswith("use count 3")


def test_show_table_pads_every_entry_of_a_machine_to_one_width():
    m = ptsim.Machine(arch="x86_64", policy="copy", ram=8 << 20)
    p = m.spawn()
    a = p.mmap(addr=1 << 30, length=2 << 20)
    p.write(a, b"x")
    p.write(a + (511 << 12), b"x")
    head, *lines = show_table(p, a).splitlines()
    assert [len(line) for line in lines] == [len(lines[0])] * 2 and lines[1].startswith("  [511] 0x")
    assert [int(re.search(r"\] (0x[0-9a-f]+)", line)[1], 16) >> 12 for line in lines] == [p.translate(a) >> 12, p.translate(a + (511 << 12)) >> 12]


# -- list_tables and table_pages -----------------------------------------------------------


def tables_held(m, processes):
    """Page-table pages held, from the counters: what was allocated and not freed, plus a root
    for each live process (roots are not counted as allocations)."""
    c = m.counters
    return c.get("tables_allocated", 0) - c.get("tables_freed", 0) + len(processes)


def test_list_tables_use_counts_equal_the_pointers_to_each_table():
    m, p, c1, c2, a = three_sharers()
    c1.write(a + PAGE, b"1")
    c3 = c2.fork()
    c2.exit()
    tables = list_tables(m)
    processes = [p, c1, c3]
    for t in tables:
        assert t.use_count == len(t.pids)
        if t.level == m.arch.levels - 1:
            assert t.pids == tuple(q.pid for q in processes if walked_table(q, a) == t.frame)
    assert table_pages(m) == len(tables) == tables_held(m, processes)
    assert use_count(c3, a) == 2 and use_count(c1, a) == 1 and use_count(p, 0x40) == 0
    assert [t.frame for t in list_tables(c1)] == [t.frame for t in tables if c1.pid in t.pids]
    m.check()


# -- counters_gained -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["copy", "shared"])
def test_counters_gained_agree_with_faults_and_free_frames(policy):
    m = toy(policy)
    p = m.spawn()
    a = p.mmap(addr=A, length=SPAN)
    before, free, faults = m.counters, m.free_frames, p.minflt
    p.write(a, b"x" * 3 * PAGE)
    gained = counters_gained(m, before)
    assert gained["fault_anon"] == p.minflt - faults == 3
    assert gained["pages_allocated"] + gained["tables_allocated"] == free - m.free_frames
    assert list(gained) == [name for name in COUNTERS if name in gained]  # the kernel's order
    before, free = m.counters, m.free_frames
    c = p.fork()
    gained = counters_gained(m, before)
    assert gained["tables_allocated"] + 1 == free - m.free_frames  # and the child's pgd
    assert gained["ptes_wrprotected"] == 3
    mapped = sum(c.translate(a + i * PAGE) is not None for i in range(8))
    assert mapped == 3
    assert gained.get("ptes_copied", 0) == (mapped if policy == "copy" else 0)
    assert gained.get("tables_shared", 0) == (1 if policy == "shared" else 0)
    before = m.counters
    c.read(a, 1)
    assert counters_gained(m, before) == {}  # a read of a present page: nothing moved


# -- read-only, and bad arguments ----------------------------------------------------------


def test_the_inspectors_change_nothing():
    m, p, c1, c2, a = three_sharers()
    c1.read(a, 1)
    before = state(m)
    counts = m.counters
    for q in (p, c1, c2):
        pte_table(q, a), use_count(q, a), show_table(q, a), show_table(q, a + SPAN), list_tables(q)
    list_tables(m), table_pages(m), counters_gained(m, counts)
    assert same(before, state(m))


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda m, p: pte_table(m, A), "p"),
        (lambda m, p: pte_table(p, -1), "addr"),
        (lambda m, p: pte_table(p, True), "addr"),
        (lambda m, p: pte_table(p, TOY.task_size), "addr"),
        (lambda m, p: use_count(p, "0x800"), "addr"),
        (lambda m, p: show_table(None, A), "p"),
        (lambda m, p: show_table(p, 1.0), "addr"),
        (lambda m, p: list_tables(3), "obj"),
        (lambda m, p: table_pages(p), "m"),
        (lambda m, p: counters_gained(p, {}), "m"),
        (lambda m, p: counters_gained(m, None), "before"),
        (lambda m, p: counters_gained(m, {"faults": 1}), "before"),
        (lambda m, p: counters_gained(m, {"fault_anon": -1}), "before"),
        (lambda m, p: counters_gained(m, {"fault_anon": 99}), "before"),  # not an earlier copy
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    m, p, c1, c2, a = three_sharers()
    before = state(m)
    with pytest.raises(ValueError, match=f"^{name} must"):
        call(m, p)
    assert same(before, state(m))


def test_an_exited_process_has_no_tables_to_look_at():
    m, p, c1, c2, a = three_sharers()
    c2.exit()
    for call in (pte_table, use_count, show_table):
        with pytest.raises(ptsim.ProcessExited):
            call(c2, a)
    with pytest.raises(ptsim.ProcessExited):
        list_tables(c2)
