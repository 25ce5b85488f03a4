"""ptsim.draw: the graph is checked against what the machine says (mem_map, p.translate, the
entries as `follow_pte` reads them), never against a hand-drawn answer; the figures are
checked to build on every geometry, to outline what the events name, and to refuse bad input."""

import io

import matplotlib
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import ptsim
from ptsim.draw import (
    address_spaces,
    before_after,
    event_table,
    page_tables,
    physical_memory,
    style,
    table_graph,
)
from ptsim.draw.strips import OWNERS, SHARED, SHARED_TABLE, TABLE, frame_owners
from ptsim.draw.tables import _boxes, _mark
from ptsim.hardware.arch import _PAGE_RW
from ptsim.kernel.page import PG_PGTABLE, ZERO_PFN
from ptsim.widgets import CostExplorer, Lab, Stepper

matplotlib.use("Agg")

RAM = {"x86_64": 16 << 20, "i386": 16 << 20, "toy": 64 * 64}


def scenario(policy="shared", arch="toy", pages=6):
    """A parent that has written `pages` pages of one private region, then forked."""
    m = ptsim.Machine(arch=arch, policy=policy, ram=RAM[arch])
    p = m.spawn()
    size = m.arch.page_size
    a = p.mmap(None, pages * size, "rw")
    for i in range(pages):
        p.write(a + i * size, b"page %d" % i)
    return m, p, a


def tables_of(g, pid):
    return {n for n, d in g.nodes(data=True) if d["kind"] == "table" and pid in d["sharers"]}


def leaf_table(m, p, addr):
    """The last-level table that maps `addr` for `p`, as the kernel finds it."""
    k = m.kernel
    return k.slot_table(k.pmd_slot(p.mm, addr))


# -- the graph against the machine ------------------------------------------------------------


def test_graph_agrees_with_mem_map_and_translate():
    m, p, a = scenario("copy", pages=5)
    c = p.fork()
    c.write(a, b"child")
    g = table_graph(m)
    k = m.kernel
    assert {n[1] for n, d in g.nodes(data=True) if d["kind"] == "table"} == set(np.flatnonzero(k.mem_map.kind == PG_PGTABLE).tolist())
    for n, d in g.nodes(data=True):
        if d["kind"] == "table":
            assert d["use_count"] == k.mem_map.refcount[n[1]]
        elif d["kind"] in ("anon", "shmem"):
            assert (d["mapcount"], d["refcount"]) == (k.mem_map.mapcount[n[1]], k.mem_map.refcount[n[1]])
    size = m.arch.page_size
    for proc in (p, c):
        for i in range(5):
            addr = a + i * size
            frame = ("frame", proc.translate(addr) // size)
            edges = [e for t in tables_of(g, proc.pid) for e in [g.get_edge_data(t, frame)] if e and e["start"] == addr]
            assert len(edges) == 1, (proc, i)
            entry = k.follow_pte(proc.mm, addr)
            assert edges[0]["entry"] == entry and edges[0]["rw"] == bool(entry & _PAGE_RW)


def test_shared_fork_gives_one_table_with_two_sharers_and_write_protected_entries():
    m, p, a = scenario("shared")
    c = p.fork()
    g = table_graph(m)
    table = ("table", leaf_table(m, p, a))
    assert leaf_table(m, c, a) == table[1]
    node = g.nodes[table]
    assert node["use_count"] == m.kernel.mem_map.refcount[table[1]] == 2
    assert node["sharers"] == (p.pid, c.pid)
    entries = [d for _, _, d in g.out_edges(table, data=True)]
    assert len(entries) == 6
    assert all(not d["rw"] and d["cow"] for d in entries)
    assert all(not m.kernel.follow_pte(p.mm, d["start"]) & _PAGE_RW for d in entries)


def test_child_write_after_shared_fork_shows_an_unshared_copy():
    m, p, a = scenario("shared")
    c = p.fork()
    c.write(a, b"child")
    g = table_graph(m)
    mine, theirs = ("table", leaf_table(m, c, a)), ("table", leaf_table(m, p, a))
    assert mine != theirs
    assert g.nodes[mine]["sharers"] == (c.pid,) and g.nodes[theirs]["sharers"] == (p.pid,)
    assert g.nodes[mine]["use_count"] == g.nodes[theirs]["use_count"] == 1
    size = m.arch.page_size
    new, old = ("frame", c.translate(a) // size), ("frame", p.translate(a) // size)
    assert new != old
    assert g.edges[mine, new]["rw"] and not g.edges[theirs, old]["rw"]
    # The other pages: one frame each, now mapped by two entries, read-only in both tables.
    other = ("frame", p.translate(a + size) // size)
    assert g.nodes[other]["mapcount"] == 2 and g.nodes[other]["mappers"] == (p.pid, c.pid)
    assert g.edges[mine, other]["cow"] and g.edges[theirs, other]["cow"]


def test_sibling_case_one_table_use_count_two_between_the_children():
    """Phillips: the table "could just as easily have been shared by a sibling of the child"."""
    m, p, a = scenario("shared")
    c1, c2 = p.fork(), p.fork()
    assert table_graph(m).nodes[("table", leaf_table(m, p, a))]["use_count"] == 3
    p.write(a, b"parent")  # the parent takes a copy of its own; the children keep the table
    g = table_graph(m)
    kept = ("table", leaf_table(m, c1, a))
    assert kept[1] == leaf_table(m, c2, a) != leaf_table(m, p, a)
    assert g.nodes[kept]["use_count"] == 2 and g.nodes[kept]["sharers"] == (c1.pid, c2.pid)
    assert g.nodes[("table", leaf_table(m, p, a))]["sharers"] == (p.pid,)


def test_copy_policy_shares_no_table():
    m, p, a = scenario("copy")
    p.fork()
    p.fork()
    g = table_graph(m)
    assert all(d["use_count"] == 1 and len(d["sharers"]) == 1 for _, d in g.nodes(data=True) if d["kind"] == "table")
    frame = ("frame", p.translate(a) // m.arch.page_size)
    assert g.in_degree(frame) == 3 == g.nodes[frame]["mapcount"]


def test_upper_wp_write_protects_through_the_upper_entry():
    m, p, a = scenario("upper_wp")
    c = p.fork()
    g = table_graph(m)
    table = ("table", leaf_table(m, p, a))
    uppers = [d for _, _, d in g.in_edges(table, data=True)]
    assert len(uppers) == 2 and all(not d["rw"] and d["cow"] for d in uppers)
    assert g.nodes[table]["sharers"] == (p.pid, c.pid)


def test_zero_page_and_read_only_entries_are_not_copy_on_write():
    m, p, _ = scenario("copy", pages=2)
    size = m.arch.page_size
    b = p.mmap(None, 3 * size, "rw")
    p.read(b, 1)
    p.read(b + 2 * size, 1)
    r = p.mmap(None, size, "r")
    p.read(r, 1)
    g = table_graph(m)
    zero = [d for _, v, d in g.edges(data=True) if v == ("frame", 1)]
    assert sum(len(d["indexes"]) for d in zero) == 3
    assert g.nodes[("frame", 1)]["kind"] == "zero"
    ro = [d for _, _, d in g.edges(data=True) if d.get("start") == r]
    assert len(ro) == 1 and not ro[0]["rw"] and not ro[0]["cow"]


def test_subset_of_processes_lists_only_them_as_sharers():
    m, p, a = scenario("shared")
    c = p.fork()
    g = table_graph(m, c)
    assert g.graph["pids"] == (c.pid,)
    node = g.nodes[("table", leaf_table(m, c, a))]
    assert node["sharers"] == (c.pid,) and node["use_count"] == 2
    assert table_graph(m, [c.pid, p]).graph["pids"] == (p.pid, c.pid)


# -- figures --------------------------------------------------------------------------------


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    return buf.getvalue()


@pytest.mark.parametrize("arch", ["toy", "x86_64", "i386"])
@pytest.mark.parametrize("policy", ["copy", "shared", "upper_wp"])
def test_every_picture_builds_on_every_geometry(arch, policy):
    m, p, a = scenario(policy, arch, pages=8)
    s = p.mmap(None, 2 * m.arch.page_size, "rw", shared=True)
    p.write(s, b"shm")
    c = p.fork()
    c.write(a, b"c")
    m.swap_out(p, a + 3 * m.arch.page_size)
    figs = [page_tables(m), page_tables(m, c, collapse=True), address_spaces(m), physical_memory(m)]
    fig, events = before_after(m, lambda: p.write(a + m.arch.page_size, b"p"))
    figs.append(fig)
    assert events
    for f in figs:
        assert isinstance(f, Figure)
        assert _png(f)[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_state_same_picture():
    m, p, _ = scenario("shared")
    p.fork()
    for draw in (page_tables, address_spaces, physical_memory):
        assert _png(draw(m)) == _png(draw(m))


def test_draws_into_the_callers_axes_and_leaves_pyplot_alone():
    import matplotlib.pyplot as plt

    m, _, _ = scenario()
    before = plt.get_fignums()
    fig = Figure()
    ax = fig.add_subplot()
    assert page_tables(m, ax=ax) is fig
    assert address_spaces(m, ax=ax) is fig
    assert isinstance(page_tables(m), Figure)
    assert plt.get_fignums() == before


def _highlighted_boxes(m, events):
    g = table_graph(m)
    rows = _boxes(g, m.arch, False)
    _mark(g, m.arch, rows, events)
    return {b.key for row in rows for b in row if b.highlight}, {(b.key, c.lo) for row in rows for b in row for c in b.cells if c.highlight}


def test_highlight_outlines_the_tables_frames_and_entry_the_events_name():
    m, p, a = scenario("shared")
    c = p.fork()
    with m.trace() as events:
        c.write(a, b"child")
    boxes, cells = _highlighted_boxes(m, events)
    unshare = next(e for e in events if e.action == "unshare_table")
    copy = next(e for e in events if e.action == "copy_page")
    assert ("table", unshare.table) in boxes and ("table", unshare.frame) in boxes
    assert ("frame", copy.frame) in boxes and ("frame", copy.detail["from"]) in boxes
    index = m.arch.index(m.arch.levels - 1, a)
    assert (("table", leaf_table(m, c, a)), index) in cells  # the entry do_wp_page rewrote
    assert (("table", leaf_table(m, p, a)), index) not in cells  # the parent's is untouched
    named = {e.table for e in events if e.table is not None} | {e.frame for e in events if e.frame is not None} | {copy.detail["from"]}
    assert {key[1] for key in boxes} == named
    fig = page_tables(m, highlight=events)
    outlines = [r for r in fig.axes[0].patches if isinstance(r, Rectangle) and r.get_edgecolor()[:3] == matplotlib.colors.to_rgb(style.HIGHLIGHT)]
    assert len(outlines) == len(boxes) + len(cells)


def test_before_after_shows_a_forks_child_only_after():
    m, p, _ = scenario("shared")
    fig, events = before_after(m, p.fork, processes=[p])
    assert len(fig.axes) == 2 and all(isinstance(ax, Axes) for ax in fig.axes)
    child = next(e.pid for e in events if e.action == "share_table")
    titles = [" ".join(t.get_text().split()) for ax in fig.axes for t in ax.texts if t.get_text().startswith("pid")]
    assert titles.count(f"pid {p.pid}") == 2 and titles.count(f"pid {child}") == 1


def test_event_table_lists_every_event():
    m, p, a = scenario("shared")
    c = p.fork()
    with m.trace() as events:
        c.write(a, b"x")
    lines = event_table(events).splitlines()
    assert lines[0].split() == ["func", "action", "pid", "addr", "level", "table", "frame", "count", "detail"]
    assert len(lines) == len(events) + 1
    copy = next(e for e in events if e.action == "copy_page")
    line = next(line for line in lines if "copy_page" in line)
    assert f"{copy.addr:#x}" in line and str(copy.frame) in line and f"from={copy.detail['from']}" in line
    assert event_table([]).splitlines()[0].startswith("func")


def test_physical_memory_owners_agree_with_the_machine():
    m, p, a = scenario("copy")
    c = p.fork()
    c.write(a, b"c")
    codes, pids = frame_owners(m)
    size, k = m.arch.page_size, m.kernel
    assert codes[c.translate(a) // size] == OWNERS + pids.index(c.pid)
    assert codes[p.translate(a) // size] == OWNERS + pids.index(p.pid)
    assert codes[p.translate(a + size) // size] == SHARED
    assert set(np.flatnonzero((codes == TABLE) | (codes == SHARED_TABLE)).tolist()) == set(np.flatnonzero(k.mem_map.kind == PG_PGTABLE).tolist())
    m2, p2, a2 = scenario("shared")
    p2.fork()
    codes2, _ = frame_owners(m2)
    assert codes2[leaf_table(m2, p2, a2)] == SHARED_TABLE


def test_bad_arguments_raise_value_error():
    m, p, _ = scenario()
    _, q, _ = scenario()
    dead = p.fork()
    dead.exit()
    for bad in ("1", 99, [p, 99], q, [dead], [], 1.5, [None], True):
        with pytest.raises(ValueError, match="processes"):
            table_graph(m, bad)
        with pytest.raises(ValueError, match="processes"):
            page_tables(m, bad)
        with pytest.raises(ValueError, match="processes"):
            address_spaces(m, bad)
    for draw in (table_graph, page_tables, address_spaces, physical_memory):
        with pytest.raises(ValueError, match="machine"):
            draw("not a machine")
    with pytest.raises(ValueError, match="ax"):
        page_tables(m, ax="axes")
    with pytest.raises(ValueError, match="collapse"):
        page_tables(m, collapse="yes")
    with pytest.raises(ValueError, match="highlight"):
        page_tables(m, highlight=[1, 2])
    with pytest.raises(ValueError, match="call"):
        before_after(m, "p.fork()")
    with pytest.raises(ValueError, match="events"):
        event_table("events")
    free = m.free_frames
    with pytest.raises(ValueError):
        before_after(m, p.fork, processes=[99])
    assert m.free_frames == free  # refused before the call ran


def test_collapsed_x86_groups_alike_tables_and_splits_the_one_unshared():
    m = ptsim.Machine(arch="x86_64", policy="shared", ram=64 << 20)
    p = m.spawn()
    span, size = m.arch.pte_span, m.arch.page_size
    a = p.mmap(64 * span, 4 * span, "rw")
    for i in range(0, 4 * span, size):
        p.write(a + i, b"x")
    c = p.fork()
    leaves = tuple(leaf_table(m, p, a + i * span) for i in range(4))
    rows = _boxes(table_graph(m), m.arch, True)
    keys = {b.key for row in rows for b in row}
    assert ("tables", leaves) in keys
    assert ("frames", tuple(p.translate(a + i) // size for i in range(0, 4 * span, size))) in keys
    c.write(a + 2 * span, b"y")  # the child unshares the third table: the group splits around it
    rows = _boxes(table_graph(m), m.arch, True)
    keys = {b.key for row in rows for b in row}
    assert ("tables", leaves[:2]) in keys and ("table", leaves[2]) in keys and ("table", leaf_table(m, c, a + 2 * span)) in keys
    assert not any(k[0] == "tables" and leaves[2] in k[1] for k in keys)


def test_prot_none_entries_are_cells_of_their_own():
    m, p, a = scenario("copy", pages=4)
    p.mprotect(a, 2 * m.arch.page_size, "")
    g = table_graph(m)
    table = ("table", leaf_table(m, p, a))
    cells = next(b for row in _boxes(g, m.arch, False) for b in row if b.key == table).cells
    index = m.arch.index(m.arch.levels - 1, a)
    assert [c.state for c in cells[index : index + 4]] == ["none", "none", "page", "page"]
    edge = next(d for _, _, d in g.out_edges(table, data=True) if d["start"] == a)
    assert edge["protnone"] and not edge["present"] and not edge["cow"]


def test_address_space_strip_reads_the_entries_the_kernel_follows():
    from ptsim.draw.strips import _ptes

    m = ptsim.Machine(arch="toy", policy="shared", ram=RAM["toy"])
    p = m.spawn()
    size, span = m.arch.page_size, m.arch.pte_span
    a = p.mmap(span - 2 * size, 5 * size, "rw")  # across a table boundary
    for i in (0, 1, 3):
        p.write(a + i * size, b"x")
    p.fork()
    entries = _ptes(m.kernel, p.mm, a, a + 5 * size)
    assert entries.tolist() == [m.kernel.follow_pte(p.mm, a + i * size) for i in range(5)]


# -- one entry's bit fields -------------------------------------------------------------------

SDM_FIELDS = {  # Intel SDM vol. 3, 4.3 and 4.5: the fields of a 4-byte and an 8-byte entry, bit 31 or 63 first
    "i386": ["PFN", "avail", "G", "PS", "D", "A", "PCD", "PWT", "US", "RW", "P"],
    "x86_64": ["NX", "avail", "PFN", "avail", "G", "PS", "D", "A", "PCD", "PWT", "US", "RW", "P"],
}


def drawn_fields(fig):
    """[(name, value, lo, hi)] of each field as the figure writes it, left to right."""
    columns = {}
    for text in fig.axes[0].texts:
        x, y = text.get_position()
        columns.setdefault(round(x, 6), []).append((y, text.get_text()))
    fields = []
    for x in sorted(columns):
        name, value, span = (s for _, s in sorted(columns[x], reverse=True))
        hi, _, lo = span.partition("–")
        fields.append((name, int(value), int(lo or hi), int(hi)))
    return fields


def assert_drawn_exactly(entry, arch):
    """The drawn fields cover every bit of the entry once, and their values rebuild it."""
    fields = drawn_fields(ptsim.draw.pte_bits(entry, arch))
    assert sorted(b for _, _, lo, hi in fields for b in range(lo, hi + 1)) == list(range(8 * arch.entry_bytes))
    assert sum(value << lo for _, value, lo, _ in fields) == entry
    return {name: value for name, value, _, _ in fields}, [name for name, _, _, _ in fields]


@pytest.mark.parametrize("arch", ["x86_64", "i386"])
def test_pte_bits_draws_what_the_machine_put_in_its_entries(arch):
    m, p, a = scenario("copy", arch, pages=2)
    k, size = m.kernel, m.arch.page_size
    z = p.mmap(None, size, "rw")
    p.read(z, 1)  # never written: the zero page, read-only
    c = p.fork()
    written, zero = k.follow_pte(p.mm, a), k.follow_pte(p.mm, z)
    shown, names = assert_drawn_exactly(written, m.arch)
    assert names == SDM_FIELDS[arch]
    assert shown["PFN"] == p.translate(a) // size
    assert (shown["P"], shown["RW"], shown["US"], shown["A"], shown["D"]) == (1, 0, 1, 1, 1)  # fork write-protected it
    shown, _ = assert_drawn_exactly(k.follow_pte(c.mm, a), m.arch)
    assert shown["PFN"] == c.translate(a) // size == p.translate(a) // size and shown["RW"] == 0
    shown, _ = assert_drawn_exactly(zero, m.arch)
    assert shown["PFN"] == p.translate(z) // size and (shown["RW"], shown["D"]) == (0, 0)
    c.write(a, b"child")  # do_wp_page copies the page: a new frame, writable and dirty
    shown, _ = assert_drawn_exactly(k.follow_pte(c.mm, a), m.arch)
    assert shown["PFN"] == c.translate(a) // size != p.translate(a) // size and (shown["RW"], shown["D"]) == (1, 1)
    upper = k.entry(p.mm.pgd, m.arch.index(0, a))
    shown, _ = assert_drawn_exactly(upper, m.arch)
    assert k.mem_map.kind[shown["PFN"]] == PG_PGTABLE and (shown["P"], shown["RW"], shown["US"]) == (1, 1, 1)


def test_pte_bits_names_bit_8_and_the_pfn_field_as_linux_reads_a_non_present_entry():
    m, p, a = scenario("copy", "x86_64", pages=3)
    size = m.arch.page_size
    frame = p.translate(a) // size
    p.mprotect(a, size, "")
    shown, names = assert_drawn_exactly(m.kernel.follow_pte(p.mm, a), m.arch)
    assert names[4] == "PROTNONE" and (shown["PROTNONE"], shown["P"], shown["PFN"]) == (1, 0, frame)
    with m.trace() as events:
        m.swap_out(p, a + size)
    slot = next(e for e in events if e.action == "swap_out_page").detail["slot"]
    shown, names = assert_drawn_exactly(m.kernel.follow_pte(p.mm, a + size), m.arch)
    assert names[2] == "swap slot" and names[4] == "G" and (shown["swap slot"], shown["P"]) == (slot, 0)


@pytest.mark.parametrize("arch", sorted(ptsim.ARCHES))
def test_pte_bits_every_field_all_ones_and_the_callers_axes(arch):
    import matplotlib.pyplot as plt

    geometry = ptsim.ARCHES[arch]
    ones = (1 << 8 * geometry.entry_bytes) - 1
    for name, value, lo, hi in drawn_fields(ptsim.draw.pte_bits(ones, arch)):
        assert value == (1 << hi - lo + 1) - 1, name
    before = plt.get_fignums()
    fig = Figure()
    ax = fig.add_subplot()
    assert ptsim.draw.pte_bits(0x2067, geometry, ax=ax, title="mine") is fig and ax.get_title() == "mine"
    assert plt.get_fignums() == before
    assert _png(ptsim.draw.pte_bits(0x2067, arch)) == _png(ptsim.draw.pte_bits(0x2067, geometry))


def test_pte_bits_bad_arguments_raise_value_error():
    pte_bits = ptsim.draw.pte_bits
    for bad in (-1, 1 << 64, "0x2067", 1.5, True, None):
        with pytest.raises(ValueError, match="entry"):
            pte_bits(bad, "x86_64")
    with pytest.raises(ValueError, match="entry"):
        pte_bits(1 << 32, "i386")  # an x86_64-sized entry is not an i386 entry
    for bad in ("arm64", None, 4, ptsim.Machine):
        with pytest.raises(ValueError, match="arch"):
            pte_bits(0x2067, bad)
    with pytest.raises(ValueError, match="ax"):
        pte_bits(0x2067, "i386", ax="axes")
    with pytest.raises(ValueError, match="title"):
        pte_bits(0x2067, "i386", title=1)


# -- readable at the notebook's width (the rule is style's: no text under 11.2 px as shown) -----


A = 0x1000  # the chapters' toy examples start here, on a last-level table boundary


def toy_written_then_read(policy="shared", children=0):
    """Chapters 2, 4 and 5: pages 0-2 of 8 at A written, page 4 read; then `children` forks."""
    m = ptsim.Machine(arch="toy", policy=policy, ram=16 << 10)
    p = m.spawn()
    p.mmap(addr=A, length=8 * 64, prot="rw")
    p.write(A, b"A" * 3 * 64)
    p.read(A + 4 * 64, 1)
    return m, p, [p.fork() for _ in range(children)]


def toy_one_process():
    """Chapter 1: four pages, one written, the fourth only read (Figure 1.2)."""
    m = ptsim.Machine(arch="toy", policy="copy", ram=64 * 64)
    p = m.spawn()
    a = p.mmap(addr=None, length=4 * 64, prot="rw")
    p.write(a + 69, b"hello")
    with m.trace() as events:
        p.read(a + 3 * 64, 1)
    return m, p, events


def x86_8mib():
    m = ptsim.Machine(arch="x86_64", policy="copy", ram=64 << 20)
    q = m.spawn()
    q.write(q.mmap(addr=0x4000_0000, length=8 << 20, prot="rw"), bytes(8 << 20))
    return m, q


def siblings():
    """Chapter 5: two forks, then the parent writes page 0 (Figure 5.2)."""
    m, p, (c1, c2) = toy_written_then_read(children=2)
    with m.trace() as events:
        p.write(A, b"P")
    return m, (p, c1, c2), events


def each_wrote():
    """Chapter 5 after each child wrote page 0 too (Figure 5.3)."""
    m, (p, c1, c2), _ = siblings()
    c1.write(A, b"1")
    c2.write(A, b"2")
    return m


def copy_vs_shared():
    """Chapter 4's Figure 4.3: one fork under each policy, one above the other, in the notebook's figure."""
    fig = Figure(figsize=(10, 9), layout="constrained")
    for ax, policy in zip(fig.subplots(2, 1), ("copy", "shared")):
        m, _, _ = toy_written_then_read(policy, children=1)
        page_tables(m, ax=ax, title=f'policy="{policy}": after one fork')
    return fig


def three_tables():
    """Chapter 6: three shared pte tables, three processes."""
    m = ptsim.Machine(arch="toy", policy="shared", ram=16 << 10)
    p = m.spawn()
    p.mmap(addr=A, length=3 * 512, prot="rw")
    for i in range(9):
        p.write(A + (i // 3) * 512 + (i % 3) * 64, bytes([65 + i]) * 64)
    p.fork(), p.fork()
    return m


def mixed_table():
    """Chapter 7: private and MAP_SHARED pages in one shared table."""
    m = ptsim.Machine(arch="toy", policy="shared", ram=16 << 10)
    p = m.spawn()
    p.mmap(addr=A, length=4 * 64, prot="rw")
    p.mmap(addr=A + 4 * 64, length=4 * 64, prot="rw", shared=True)
    p.write(A, b"p" * 3 * 64)
    p.write(A + 4 * 64, b"s" * 3 * 64)
    with m.trace() as events:
        p.fork()
    return m, events


def upper_wp():
    m = ptsim.Machine(arch="toy", policy="upper_wp", ram=16 << 10)
    p = m.spawn()
    p.mmap(addr=A, length=8 * 64, prot="rw")
    p.write(A, b"A" * 8 * 64)
    p.fork()
    return m


def _first_fork():
    m, p, _ = toy_written_then_read()
    with m.trace() as events:
        p.fork()
    return page_tables(m, highlight=events, title="after the first fork (policy shared)")


def _child_write():
    m, _, (c,) = toy_written_then_read(children=1)
    return before_after(m, lambda: c.write(A, b"c"))[0]


def _fork_copy():
    m, p, _ = toy_written_then_read("copy")
    return before_after(m, p.fork)[0]


def _x86_forked_memory():
    m, q = x86_8mib()
    q.fork()
    return physical_memory(m)


# Every figure-making function of ptsim.draw, on inputs like the chapters'.
FIGURES = {
    "pte_bits (Figure 1.1)": lambda: ptsim.draw.pte_bits(0x8000_0000_0000_2067, "x86_64"),
    "pte_bits i386": lambda: ptsim.draw.pte_bits(0x2067, "i386"),
    "page_tables toy pid 1 (Figure 1.2)": lambda: page_tables(toy_one_process()[0], highlight=toy_one_process()[2]),
    "page_tables x86_64 8 MiB": lambda: page_tables(*x86_8mib()),
    "before_after fork (chapter 2)": _fork_copy,
    "before_after child write (chapter 5)": _child_write,
    "page_tables first fork (chapter 4)": _first_fork,
    "page_tables copy vs shared (Figure 4.3)": copy_vs_shared,
    "page_tables siblings (Figure 5.2)": lambda: page_tables(siblings()[0], highlight=siblings()[2]),
    "address_spaces (Figure 5.3)": lambda: address_spaces(each_wrote()),
    "address_spaces x86_64": lambda: address_spaces(x86_8mib()[0]),
    "page_tables three shared tables (chapter 6)": lambda: page_tables(three_tables()),
    "page_tables mixed table (chapter 7)": lambda: page_tables(mixed_table()[0], highlight=mixed_table()[1]),
    "page_tables upper_wp (chapter 9)": lambda: page_tables(upper_wp()),
    "physical_memory toy": lambda: physical_memory(each_wrote()),
    "physical_memory x86_64": _x86_forked_memory,
}


def assert_readable(name, texts):
    assert texts, f"{name}: no text drawn"
    small = [(s, round(px, 1)) for s, px in texts if px < style.MIN_PX]
    assert not small, f"{name}: text under {style.MIN_PX:.1f} px as shown: {small[:10]}"


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_text_readable_at_the_notebooks_width(name):
    assert_readable(name, style.shown_texts(FIGURES[name]()))


def lab_pictures(side_by_side):
    """The Lab's pictures along a session like chapter 4's and 5's: start, fork, the child
    writes, a second fork, the parent unmaps a page, the child exits."""
    lab = Lab(arch="toy", policies=("copy", "shared"), side_by_side=side_by_side)
    addr = lab.processes("copy")[1].mm.vmas[0].start
    calls = [lambda: None, lambda: lab.do("fork", pid=1), lambda: lab.do("write", pid=2, addr=addr, data=b"z"),
             lambda: lab.do("fork", pid=1), lambda: lab.do("munmap", pid=1, addr=addr + 64), lambda: lab.do("exit", pid=2)]
    for call in calls:
        call()
        for policy in lab.policies:
            yield f"after call {lab.calls}, {policy}", lab.figure(policy)


@pytest.mark.parametrize("side_by_side", [True, False])
def test_lab_pictures_readable_in_their_column(side_by_side):
    box = style.OUTPUT_PX / (2 if side_by_side else 1)  # each picture fills its column
    for name, fig in lab_pictures(side_by_side):
        assert_readable(f"Lab(side_by_side={side_by_side}) {name}", style.shown_texts(fig, box))


def test_stepper_and_cost_pictures_readable_at_the_output_width():
    m, _, (c,) = toy_written_then_read(children=1)
    stepper = Stepper(m, lambda: c.write(A + 2 * 64, b"s"))
    for k in range(1, len(stepper) + 1):
        assert_readable(f"Stepper step {k}", style.shown_texts(stepper.figure_at(k), style.OUTPUT_PX))
    explorer = CostExplorer(sizes_mib=(1, 2))
    assert_readable("CostExplorer", style.shown_texts(explorer.figure(), style.OUTPUT_PX))


def test_the_rule_fails_text_too_small_for_the_width():
    """The check can fail: 7-point text in a 10-inch figure is scaled down under 11.2 px."""
    fig = Figure(figsize=(10, 2))
    fig.text(0.5, 0.5, "small", fontsize=7)
    fig.text(0.5, 0.2, "large", fontsize=10)
    shown = dict(style.shown_texts(fig))
    assert shown["small"] < style.MIN_PX <= shown["large"]
    assert style.shown_px(style.smallest_points(fig), 10 + 2 * style.PAD) == pytest.approx(style.MIN_PX)


def _legend_and_drawn_looks(fig):
    ax = fig.axes[0]
    legend = {(to_hex(h.get_facecolor()), h.get_hatch() or "") for h in ax.get_legend().legend_handles}
    drawn = {(to_hex(p.get_facecolor()), p.get_hatch() or "") for p in ax.patches}
    return legend, drawn


@pytest.mark.parametrize("machine", [each_wrote, lambda: x86_8mib()[0], lambda: toy_written_then_read(children=3)[0]])
def test_address_spaces_legend_shows_exactly_the_looks_drawn(machine):
    legend, drawn = _legend_and_drawn_looks(address_spaces(machine()))
    assert legend == drawn


def test_address_spaces_legend_names_each_shared_frame_and_its_mappers():
    m = each_wrote()
    fig = address_spaces(m)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    k = m.kernel
    shared = [pfn for pfn in range(k.phys.nframes) if k.mem_map.mapcount[pfn] > 1 and pfn != ZERO_PFN]
    assert shared and all(f"frame {pfn}, mapped by pid 1, 2, 3" in labels for pfn in shared)
