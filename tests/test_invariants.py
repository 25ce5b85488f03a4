"""The checker catches each thing its docstring says it holds (ptsim/checking/invariants.py).

Every test builds a small valid machine (`world`, which checks it), breaks one invariant by
poking the kernel's state directly, and expects the InvariantError of that invariant, matched
on its message: a checker weakened at that site fails the test. Where a poke cannot help also
upsetting a count the checker looks at later, the invariant named is the first one it meets.
The last group pins the entries fork gives the child under each policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest

import ptsim
from ptsim import InvariantError
from ptsim.hardware import TLBEntry
from ptsim.hardware.arch import PFN_SHIFT, _PAGE_ACCESSED, _PAGE_DIRTY, _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_RW
from ptsim.kernel.page import PG_PGTABLE, PG_SHMEM
from ptsim.peek import pte_table

POLICIES = ["copy", "shared", "upper_wp"]
SHARING = ["shared", "upper_wp"]
RAM = {"toy": 1 << 14, "x86_64": 8 << 20}


# -- a small valid machine, and ways to poke it ---------------------------------------------


@dataclass
class World:
    m: ptsim.Machine
    p: ptsim.Process  # the parent
    c: ptsim.Process | None  # its child, when forked
    priv: int  # private rw: pages 0 and 1 written, 2 read (the zero page), 3 swapped out
    ro: int  # private, page 0 written, then the VMA made "r"
    none: int  # private, page 0 written, then the VMA made PROT_NONE
    shm: int  # MAP_SHARED rw: pages 0 and 1 written

    @property
    def k(self):
        return self.m.kernel

    def at(self, base: int, i: int) -> int:
        return base + i * self.m.arch.page_size


def world(policy: str = "copy", fork: bool = False, arch: str = "toy") -> World:
    """One VMA of each kind, each in a last-level table of its own; forked if asked; checked."""
    m = ptsim.Machine(arch=arch, policy=policy, ram=RAM[arch])
    p, span, page = m.spawn(), m.arch.pte_span, m.arch.page_size
    priv = p.mmap(4 * span, span, "rw", False)
    p.write(priv, b"page0")
    p.write(priv + page, b"page1")
    p.read(priv + 2 * page, 1)
    p.write(priv + 3 * page, b"page3")
    assert m.swap_out(p, priv + 3 * page)
    ro = p.mmap(6 * span, span, "rw", False)
    p.write(ro, b"ro")
    p.mprotect(ro, span, "r")
    none = p.mmap(8 * span, span, "rw", False)
    p.write(none, b"none")
    p.mprotect(none, span, "")
    shm = p.mmap(10 * span, span, "rw", True)
    p.write(shm, b"shm0")
    p.write(shm + page, b"shm1")
    c = p.fork() if fork else None
    m.check()
    return World(m, p, c, priv, ro, none, shm)


def pte(w: World, p, addr: int) -> int:
    return w.k.follow_pte(p.mm, addr)


def set_pte(w: World, p, addr: int, value: int) -> None:
    w.k.set_entry(pte_table(p, addr), w.k.arch.index(w.k.arch.levels - 1, addr), value)


def frame(w: World, p, addr: int) -> int:
    return w.k.entry_pfn(pte(w, p, addr))


def with_frame(w: World, entry: int, pfn: int) -> int:
    """`entry` with its frame replaced by `pfn`, its flags kept."""
    return (entry & ~w.k.arch.pfn_mask) | (pfn << PFN_SHIFT)


def a_free_frame(w: World) -> int:
    return int(w.k.mem_map.free_frames()[-1])


def fails(message: str, exact: bool = False):
    """Expect the checker's InvariantError with `message`: a regex, or literal text if `exact`."""
    return pytest.raises(InvariantError, match=re.escape(message) if exact else message)


def kmm(p):
    """The kernel's own mm of process `p`, to break (Process.mm is a read-only view)."""
    return p._task.mm


def miscount(w: World, p, counter: str, by: int) -> str:
    """Put one of p's counts (rss, swapents, pgtables_bytes) `by` off what its tables hold, and
    return the start of the message the checker must give. rss and swapents are kept in the
    last-level table that maps them (MemMap.table_rss, table_swapents), pgtables_bytes in the mm."""
    if counter == "pgtables_bytes":
        kmm(p).pgtables_bytes += by
        return f"pid {p.pid}: pgtables_bytes is {kmm(p).pgtables_bytes} but"
    table = pte_table(p, w.priv)
    getattr(w.k.mem_map, f"table_{counter}")[table] += by
    return f"table {table}: table_rss"


# -- address spaces ---------------------------------------------------------------------------


def test_live_task_whose_mm_the_kernel_forgot_fails():
    w = world()
    del w.k.mms[w.p.mm.pcid]
    with fails(r"mms known to the kernel \[\] are not the live tasks' \[1\]"):
        w.m.check()


def test_mm_that_no_live_task_uses_fails():
    w = world()
    w.k.mm_alloc(owner=w.p.pid)  # an address space made, then never attached nor torn down
    with fails(r"mms known to the kernel \[1, 2\] are not the live tasks' \[1\]"):
        w.m.check()


# -- tables: use counts (sharing rule 1), upper entries, leaks ----------------------------------


def tables_to(w: World, p, addr: int) -> dict[str, int]:
    """The tables p's walk to `addr` goes through: its root, the table above the leaf, the leaf."""
    upper, _ = w.k.pmd_slot(p.mm, addr)
    return {"root": p.mm.pgd, "upper": upper, "leaf": pte_table(p, addr)}


@pytest.mark.parametrize("arch", ["toy", "x86_64"])
@pytest.mark.parametrize("level", ["root", "upper", "leaf"])
@pytest.mark.parametrize("delta", [1, -1], ids=["above", "below"])
@pytest.mark.parametrize("policy", POLICIES)
def test_table_use_count_off_the_upper_entries_pointing_at_it_fails(policy, delta, level, arch):
    w = world(policy, fork=True, arch=arch)
    table = tables_to(w, w.p, w.priv)[level]
    entries = 2 if level == "leaf" and policy != "copy" else 1  # the child points at it too
    refcount = w.k.mem_map.refcount
    assert refcount[table] == entries
    refcount[table] += delta
    with fails(f"table {table}: use count {entries + delta} but {entries} upper entries point at it", exact=True):
        w.m.check()


def test_table_no_mm_reaches_is_leaked():
    w = world()
    table = w.k.mem_map.alloc_one(PG_PGTABLE)
    with fails(f"page-table frames [{table}] are reached by no mm (leaked)", exact=True):
        w.m.check()


def test_non_present_upper_entry_fails():
    w = world()
    table, index = w.k.pmd_slot(w.p.mm, w.priv)
    w.k.phys.tables[table, index] &= w.k.arch.clear_bits(_PAGE_PRESENT)
    with fails(f"pid {w.p.pid}: non-present upper entry .* at level {w.m.arch.levels - 2} for {w.priv:#x}"):
        w.m.check()


@pytest.mark.parametrize("kind", ["anon", "free"])
def test_upper_entry_pointing_at_a_frame_that_is_no_table_fails(kind):
    w = world()
    target = frame(w, w.p, w.priv) if kind == "anon" else a_free_frame(w)
    table, index = w.k.pmd_slot(w.p.mm, w.priv)
    w.k.phys.tables[table, index] = with_frame(w, w.k.entry(table, index), target)
    level = w.m.arch.levels - 2
    with fails(f"pid {w.p.pid}: level-{level} entry for {w.priv:#x} points at a {kind} frame {target}", exact=True):
        w.m.check()


# -- anonymous pages: counts, leaks, anon_exclusive --------------------------------------------


@pytest.mark.parametrize("field", ["refcount", "mapcount"])
@pytest.mark.parametrize("delta", [1, -1], ids=["above", "below"])
@pytest.mark.parametrize("policy", POLICIES)
def test_anon_page_count_off_the_entries_mapping_it_fails(policy, delta, field):
    w = world(policy, fork=True)
    page, mem_map = frame(w, w.p, w.priv), w.k.mem_map
    entries = 2 if policy == "copy" else 1  # entries, not processes: a shared table holds one
    assert mem_map.refcount[page] == mem_map.mapcount[page] == entries
    getattr(mem_map, field)[page] += delta
    counts = f"refcount {mem_map.refcount[page]}, mapcount {mem_map.mapcount[page]}"
    with fails(f"anon page {page}: {counts}, but {entries} entries map it", exact=True):
        w.m.check()


def test_anon_page_with_no_counts_and_no_entry_is_leaked():
    """Counts dropped with the entry, but the page never freed."""
    w = world()
    page, mem_map = frame(w, w.p, w.at(w.priv, 1)), w.k.mem_map
    set_pte(w, w.p, w.at(w.priv, 1), 0)
    mem_map.refcount[page] = mem_map.mapcount[page] = 0
    mem_map.anon_exclusive[page] = False
    miscount(w, w.p, "rss", -1)
    w.k.tlb.flush_pcid(w.p.mm.pcid)
    with fails(f"anon pages [{page}] are mapped by no entry (leaked)", exact=True):
        w.m.check()


@pytest.mark.parametrize("policy", ["copy", "shared"])
def test_anon_exclusive_page_two_entries_map_fails(policy):
    w = world(policy, fork=True)
    if policy == "shared":
        w.c.write(w.at(w.priv, 1), b"child")  # unshares the table: two entries map page 0
    page = frame(w, w.p, w.priv)
    assert w.k.mem_map.mapcount[page] == 2 and not w.k.mem_map.anon_exclusive[page]
    w.k.mem_map.anon_exclusive[page] = True
    with fails(f"pages [{page}] are anon_exclusive but not mapped once", exact=True):
        w.m.check()


@pytest.mark.parametrize("policy", SHARING)
def test_anon_exclusive_counts_entries_so_a_page_of_a_shared_table_keeps_it(policy):
    """One entry maps it, however many mms share the table: any write unshares first."""
    w = world(policy, fork=True)
    assert w.k.mem_map.anon_exclusive[frame(w, w.p, w.priv)]
    w.m.check()


# -- shmem pages --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["refcount", "mapcount"])
@pytest.mark.parametrize("delta", [1, -1], ids=["above", "below"])
@pytest.mark.parametrize("policy", POLICIES)
def test_shmem_page_count_off_its_entries_and_cache_slot_fails(policy, delta, field):
    w = world(policy, fork=True)  # copy: fork copies no MAP_SHARED entry; shared: one table
    page, mem_map = frame(w, w.p, w.shm), w.k.mem_map
    assert (mem_map.refcount[page], mem_map.mapcount[page]) == (2, 1)
    getattr(mem_map, field)[page] += delta
    counts = f"refcount {mem_map.refcount[page]}, mapcount {mem_map.mapcount[page]}"
    with fails(f"shmem page {page}: {counts}, but 1 entries map it", exact=True):
        w.m.check()


@pytest.mark.parametrize("how", ["shmem frame in no cache", "page in two cache slots", "anon frame in a cache",
                                 "anon frame in two cache slots"])
def test_shmem_frames_and_page_caches_disagree_fails(how):
    w = world()
    cache = kmm(w.p).find_vma(w.shm).shmem.pages
    if how == "shmem frame in no cache":
        bad = w.k.mem_map.alloc_one(PG_SHMEM)
        w.k.mem_map.refcount[bad] = 0  # so that only the missing slot is wrong
    elif how == "page in two cache slots":
        bad = cache[5] = cache[0]
    elif how == "anon frame in a cache":
        bad = cache[5] = frame(w, w.p, w.priv)
    else:  # neither kind nor a single slot says shmem: only the count of slots catches it
        cache[5] = cache[6] = frame(w, w.p, w.priv)
        bad = None
    where = "" if bad is None else f" at [{bad}]"
    with fails(f"shmem frames and shmem page caches disagree{where}", exact=True):
        w.m.check()


# -- free frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["refcount", "mapcount"])
def test_free_frame_with_a_count_is_in_use(field):
    w = world()
    free = a_free_frame(w)
    getattr(w.k.mem_map, field)[free] = 1
    with fails(f"free frames [{free}] are in use", exact=True):
        w.m.check()


@pytest.mark.parametrize("how", ["free frame left off it", "used frame put on it"])
def test_free_frame_stack_disagreeing_with_the_frames_marked_free_fails(how):
    w = world()
    if how == "free frame left off it":
        w.k.mem_map.movable.pop(1)
    else:
        w.k.mem_map.movable.push(np.array([frame(w, w.p, w.priv)]))
    with fails("the free-frame stack disagrees with the frames marked free", exact=True):
        w.m.check()


def test_free_frame_that_is_not_zero_fails():
    w = world()
    free = a_free_frame(w)
    w.k.phys.frame_bytes(free)[-1] = 1
    with fails(f"free frames [{free}] are not zero", exact=True):
        w.m.check()


# -- entries against their VMAs -----------------------------------------------------------------


def entry_at(w: World, addr: int) -> str:
    """How the checker names the parent's entry for `addr`."""
    return f"pid {w.p.pid}: entry {pte(w, w.p, addr):#x} for {addr:#x} in table {pte_table(w.p, addr)}"


def test_entry_where_no_vma_is_fails():
    """munmap that dropped the VMA but left its entries."""
    w = world()
    kmm(w.p).vmas.remove(kmm(w.p).find_vma(w.ro))
    where = entry_at(w, w.ro)
    with fails(f"{where} lies outside every VMA", exact=True):
        w.m.check()


@pytest.mark.parametrize("region, prot", [("ro", "r"), ("none", "")])
def test_writable_entry_in_a_vma_without_write_fails(region, prot):
    w = world()
    addr = getattr(w, region)
    set_pte(w, w.p, addr, pte(w, w.p, addr) | _PAGE_RW)
    where = entry_at(w, addr)
    with fails(f"{where} is writable in a {prot!r} VMA", exact=True):
        w.m.check()


def test_present_entry_in_a_prot_none_vma_fails():
    w = world()
    set_pte(w, w.p, w.none, (pte(w, w.p, w.none) & ~_PAGE_PROTNONE) | _PAGE_PRESENT)
    where = entry_at(w, w.none)
    with fails(f"{where} is present in a PROT_NONE VMA", exact=True):
        w.m.check()


@pytest.mark.parametrize("region, prot", [("priv", "rw"), ("ro", "r")])
def test_prot_none_entry_in_an_accessible_vma_fails(region, prot):
    w = world()
    addr = getattr(w, region)
    set_pte(w, w.p, addr, (pte(w, w.p, addr) & ~_PAGE_PRESENT) | _PAGE_PROTNONE)
    where = entry_at(w, addr)
    with fails(f"{where} is PROT_NONE in a {prot!r} VMA", exact=True):
        w.m.check()


@pytest.mark.parametrize("how", ["cache slots swapped", "anon frame"])
def test_map_shared_entry_that_is_not_its_shmem_objects_page_fails(how):
    w = world()
    cache = kmm(w.p).find_vma(w.shm).shmem.pages
    if how == "cache slots swapped":  # every count still right: only the offsets are wrong
        cache[0], cache[1] = cache[1], cache[0]
    else:
        set_pte(w, w.p, w.shm, with_frame(w, pte(w, w.p, w.shm), frame(w, w.p, w.priv)))
    where = entry_at(w, w.shm)
    with fails(f"{where} is not its shmem object's page", exact=True):
        w.m.check()


@pytest.mark.parametrize("kind", ["shmem", "pgtable", "free"])
def test_private_entry_mapping_a_frame_that_is_not_anonymous_fails(kind):
    w = world()
    addr = w.at(w.priv, 1)
    target = {"shmem": frame(w, w.p, w.shm), "pgtable": pte_table(w.p, w.ro), "free": a_free_frame(w)}[kind]
    set_pte(w, w.p, addr, with_frame(w, pte(w, w.p, addr), target))
    where = entry_at(w, addr)
    with fails(f"{where} maps a {kind} frame in a private VMA", exact=True):
        w.m.check()


def test_writable_zero_page_fails():
    w = world()
    addr = w.at(w.priv, 2)
    set_pte(w, w.p, addr, pte(w, w.p, addr) | _PAGE_RW)
    where = entry_at(w, addr)
    with fails(f"{where} makes the zero page writable", exact=True):
        w.m.check()


# -- no hidden shared segment (sharing rule 2) --------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_private_page_two_processes_map_made_writable_in_one_fails(policy):
    """RW in the child's entry and in its upper entry: under copy that entry is the child's,
    under shared it is the one both reach, under upper_wp the upper entry is what forbade it."""
    w = world(policy, fork=True)
    table, index = w.k.pmd_slot(w.c.mm, w.priv)
    w.k.phys.tables[table, index] |= _PAGE_RW
    set_pte(w, w.c, w.priv, pte(w, w.c, w.priv) | _PAGE_RW)
    page, addr = frame(w, w.p, w.priv), hex(w.priv)
    who = [(w.p.pid, addr), (w.c.pid, addr)]
    with fails(f"page {page} is writable by one of {who}, which all map it (a hidden shared segment)", exact=True):
        w.m.check()


def test_private_page_one_process_maps_at_two_addresses_writable_fails():
    """Every count right: page 1's entry now maps page 0, whose counts say two entries."""
    w = world()
    a0, a1 = w.priv, w.at(w.priv, 1)
    page, old, mem_map = frame(w, w.p, a0), frame(w, w.p, a1), w.k.mem_map
    set_pte(w, w.p, a1, with_frame(w, pte(w, w.p, a1), page))
    mem_map.refcount[page] += 1
    mem_map.mapcount[page] += 1
    mem_map.anon_exclusive[page] = False
    mem_map.free([old])
    w.k.tlb.flush_pcid(w.p.mm.pcid)
    who = [(w.p.pid, hex(a0)), (w.p.pid, hex(a1))]
    with fails(f"page {page} is writable by one of {who}, which all map it (a hidden shared segment)", exact=True):
        w.m.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_map_shared_page_writable_by_every_mapper_passes(policy):
    """Even a read maps it writable: shmem needs no write notification (vm_page_prot has RW)."""
    w = world(policy, fork=True)
    w.c.read(w.at(w.shm, 1), 1)
    assert pte(w, w.c, w.at(w.shm, 1)) & _PAGE_RW
    w.c.write(w.shm, b"child")
    assert w.p.read(w.shm, 5) == b"child"
    assert pte(w, w.p, w.shm) & _PAGE_RW and pte(w, w.c, w.shm) & _PAGE_RW
    w.m.check()


# -- counters ------------------------------------------------------------------------------------


@pytest.mark.parametrize("counter, unit", [("rss", 1), ("swapents", 1), ("pgtables_bytes", None)])
@pytest.mark.parametrize("delta", [1, -1], ids=["above", "below"])
@pytest.mark.parametrize("policy", POLICIES)
def test_child_counter_off_what_its_tables_hold_fails(policy, delta, counter, unit):
    """The child's: under sharing policies it counts what it reaches through shared tables."""
    w = world(policy, fork=True)
    by = delta * (unit or w.m.arch.page_size)
    with fails(miscount(w, w.c, counter, by), exact=True):
        w.m.check()


@pytest.mark.parametrize("counter", ["table_rss", "table_swapents"])
def test_frame_that_is_no_table_counting_pages_fails(counter):
    w = world()
    page = frame(w, w.p, w.at(w.priv, 1))
    getattr(w.k.mem_map, counter)[page] = 1
    with fails(f"frames [{page}] are no tables but count pages", exact=True):
        w.m.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_mm_counters_off_the_tables_they_sum_fails(policy, monkeypatch):
    """The kernel's sum over an mm's tables (VmRSS, VmSwap) is held to the recount too."""
    w = world(policy, fork=True)
    real = type(w.k).get_mm_counters
    monkeypatch.setattr(type(w.k), "get_mm_counters", lambda k, mm: (real(k, mm)[0] + 1, real(k, mm)[1]))
    with fails(r"pid \d+: rss and swapents are"):
        w.m.check()


# -- swap ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [1, -1], ids=["above", "below"])
@pytest.mark.parametrize("policy", POLICIES)
def test_swap_count_off_the_entries_holding_the_slot_fails(policy, delta):
    w = world(policy, fork=True)
    slot = frame(w, w.p, w.at(w.priv, 3))
    entries = 2 if policy == "copy" else 1  # a shared table's swap entry is one entry
    assert w.k.swap.count == {slot: entries}
    w.k.swap.count[slot] += delta
    with fails(f"swap counts {{{slot}: {entries + delta}}} but the tables hold {{{slot}: {entries}}}", exact=True):
        w.m.check()


def test_swap_slot_without_contents_fails():
    w = world()
    slot = frame(w, w.p, w.at(w.priv, 3))
    del w.k.swap.data[slot]
    with fails(f"swap counts {{{slot}: 1}} but the tables hold {{{slot}: 1}}", exact=True):
        w.m.check()


@pytest.mark.parametrize("where", ["MAP_SHARED VMA", "no VMA"])
def test_swap_entry_outside_a_private_vma_fails(where):
    w = world()
    src = w.at(w.priv, 3)
    swap = pte(w, w.p, src)
    if where == "MAP_SHARED VMA":  # moved, so that one entry still holds the slot
        dst = w.at(w.shm, 5)
        set_pte(w, w.p, src, 0)
        set_pte(w, w.p, dst, swap)
        w.k.mem_map.table_swapents[pte_table(w.p, src)] -= 1  # the count moves with the entry
        w.k.mem_map.table_swapents[pte_table(w.p, dst)] += 1
    else:  # the VMA shrunk from above, the entry left behind
        dst = src
        kmm(w.p).find_vma(w.priv).end = src
    with fails(f"pid {w.p.pid}: swap entry {swap:#x} for {dst:#x} is not in a private VMA", exact=True):
        w.m.check()


# -- the TLB ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("tables_say", ["another frame", "nothing", "swapped out"])
def test_tlb_entry_the_tables_do_not_back_fails(tables_say):
    w = world()
    w.p.read(w.priv, 1)
    addr = {"another frame": w.priv, "nothing": w.at(w.priv, 4), "swapped out": w.at(w.priv, 3)}[tables_say]
    vpn = addr >> w.m.arch.page_shift
    w.k.tlb.fill(w.p.mm.pcid, vpn, TLBEntry(frame(w, w.p, w.at(w.priv, 1)), False, False))
    with fails(f"pid {w.p.pid}: stale TLB entry {addr:#x} -> frame {frame(w, w.p, w.at(w.priv, 1))}; "
               f"the tables say {pte(w, w.p, addr):#x}", exact=True):
        w.m.check()


@pytest.mark.parametrize("policy", POLICIES)
def test_tlb_write_that_the_tables_forbid_fails(policy):
    """After fork the parent may not write: its entry (copy, shared) or upper entry (upper_wp)
    says so, and the checker ANDs RW over the levels as the MMU does."""
    w = world(policy, fork=True)
    w.p.read(w.priv, 1)
    cached = w.k.tlb.entries[(w.p.mm.pcid, w.priv >> w.m.arch.page_shift)]
    assert not cached.writable
    cached.writable = True
    with fails(f"pid {w.p.pid}: TLB lets {w.priv:#x} be written; the tables make it read-only", exact=True):
        w.m.check()


def test_tlb_entry_of_a_dead_address_space_fails():
    w = world()
    w.k.tlb.fill(99, w.priv >> w.m.arch.page_shift, TLBEntry(frame(w, w.p, w.priv), False, False))
    with fails(f"TLB entry for {w.priv:#x} belongs to a dead address space (pcid 99)", exact=True):
        w.m.check()


# -- the entries fork gives the child -----------------------------------------------------------


def fork_entries(policy: str):
    """Entries before and after fork at one page of each kind: {name: (before, parent, child)}."""
    w = world(policy)
    pages = {"written": w.priv, "zero page": w.at(w.priv, 2), "swap": w.at(w.priv, 3), "read-only": w.ro,
             "PROT_NONE": w.none, "MAP_SHARED": w.shm}
    before = {name: pte(w, w.p, a) for name, a in pages.items()}
    w.c = w.p.fork()
    w.m.check()
    return w, pages, {name: (before[name], pte(w, w.p, a), pte(w, w.c, a)) for name, a in pages.items()}


def test_copy_gives_child_the_parents_entries_old_write_protected_and_still_dirty():
    """copy_pte_range: both lose RW on private memory (copy-on-write), the child's entry is
    made old (pte_mkold: Accessed clear) and keeps Dirty and the frame."""
    _, _, entries = fork_entries("copy")
    for name in ("written", "zero page", "read-only", "PROT_NONE"):
        before, parent, child = entries[name]
        assert before & _PAGE_ACCESSED, name
        assert hex(parent) == hex(before & ~_PAGE_RW), name
        assert hex(child) == hex(before & ~(_PAGE_RW | _PAGE_ACCESSED)), name
    assert entries["written"][2] & _PAGE_DIRTY and entries["read-only"][2] & _PAGE_DIRTY


def test_copy_copies_swap_entries_as_they_are():
    _, _, entries = fork_entries("copy")
    before, parent, child = entries["swap"]
    assert hex(parent) == hex(child) == hex(before) and not before & (_PAGE_PRESENT | _PAGE_PROTNONE)


def test_copy_leaves_map_shared_entries_writable_and_gives_the_child_none():
    """A VMA with no anonymous page is not copied (vma_needs_copy): the child faults it in."""
    _, _, entries = fork_entries("copy")
    before, parent, child = entries["MAP_SHARED"]
    assert before & _PAGE_RW and hex(parent) == hex(before) and child == 0


@pytest.mark.parametrize("policy", SHARING)
def test_sharing_policies_point_the_child_at_the_parents_own_tables(policy):
    w, pages, _ = fork_entries(policy)
    for name, addr in pages.items():
        assert pte_table(w.c, addr) == pte_table(w.p, addr), name


def test_shared_write_protects_private_entries_in_place_and_keeps_map_shared_rw():
    _, _, entries = fork_entries("shared")
    for name, (before, parent, child) in entries.items():
        expected = before if name == "MAP_SHARED" else before & ~_PAGE_RW  # Accessed stays: no copy
        assert hex(parent) == hex(child) == hex(expected), name
    assert entries["MAP_SHARED"][2] & _PAGE_RW


def test_upper_wp_leaves_every_entry_and_write_protects_both_upper_entries():
    w, pages, entries = fork_entries("upper_wp")
    for name, (before, parent, child) in entries.items():
        assert hex(parent) == hex(child) == hex(before), name
    for p in (w.p, w.c):
        table, index = w.k.pmd_slot(p.mm, w.priv)
        assert not w.k.entry(table, index) & _PAGE_RW
