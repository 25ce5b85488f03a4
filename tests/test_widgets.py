"""ptsim.widgets, driven from code as a notebook would drive them (no browser).

The lab is checked against the same calls played directly on fresh machines; the stepper's
snapshots against what each event says it did and against a direct run of the call; the cost
sliders against a snapshotting-parent scenario written out here by hand.
"""

import random

import numpy as np
import pytest

import ptsim
from ptsim.draw import table_graph
from ptsim.widgets import (
    LAB_CALLS,
    CostExplorer,
    Lab,
    Stepper,
    default_setup,
    fork_cost,
    snapshot,
)

TOY_RAM = 512 * 64
CHILD_PAGE = 0x7C00  # first page of default_setup's mapping on toy


def twin(policy, calls):
    """What the lab should have done: default_setup on a fresh machine, then `calls`
    (functions of the processes by pid) played directly."""
    m = ptsim.Machine(arch="toy", policy=policy, ram=TOY_RAM)
    procs = {p.pid: p for p in default_setup(m)}
    for call in calls:
        made = call(procs)
        if isinstance(made, ptsim.Process):
            procs[made.pid] = made
    return m, procs


def toy_parent(policy):
    """A toy machine with pid 1 holding two tables' worth of written pages at 0x7c00."""
    m = ptsim.Machine(arch="toy", policy=policy, ram=TOY_RAM)
    p = m.spawn()
    a = p.mmap(addr=0x7C00, length=1024)
    p.write(a, bytes(range(256)) * 4)
    return m, p, a


# -- the lab ----------------------------------------------------------------------------------


def test_lab_fork_then_child_write_counts_as_each_policy_does_directly():
    lab = Lab()
    lab.do("fork", pid=1)
    lab.do("write", pid=2, addr=CHILD_PAGE, data=b"x")
    for policy in ("copy", "shared"):
        m, _ = twin(policy, [lambda ps: ps[1].fork(), lambda ps: ps[2].write(CHILD_PAGE, b"x")])
        assert lab.machines[policy].counters == m.counters
        assert lab.machines[policy].free_frames == m.free_frames
    copy, shared = lab.machines["copy"].counters, lab.machines["shared"].counters
    assert copy.get("tables_shared", 0) == 0 and shared["tables_shared"] > 0
    assert shared["tables_unshared"] == 1 and copy.get("tables_unshared", 0) == 0
    assert copy != shared
    assert lab.last("shared").changes["tables_unshared"] == 1
    assert "tables_unshared" not in lab.last("copy").changes


def test_lab_log_after_fork_names_copy_page_range_and_the_child():
    lab = Lab()
    out = lab.do("fork", pid=1)
    for policy in ("copy", "shared"):
        text = lab.log_text(policy)
        assert "copy_page_range" in text
        assert "pid 1: fork() = 2" in text
        assert out[policy].value == 2
        assert lab.logs[policy].value.count("copy_page_range") == text.count("copy_page_range")
    assert lab.live_pids() == [1, 2]
    assert list(lab.pid.options) == [1, 2]


def test_lab_write_to_unmapped_address_shows_sigsegv_and_check_passes():
    lab = Lab()
    before = {p: m.counters for p, m in lab.machines.items()}
    out = lab.do("write", pid=1, addr=0x100, data=b"x")
    for policy, m in lab.machines.items():
        o = out[policy]
        assert isinstance(o.error, ptsim.SegmentationFault)
        assert o.line == "pid 1: write(0x100, b'x'): SIGSEGV at 0x100 (no mapping at this address)"
        assert o.line in lab.log_text(policy)
        assert "Traceback" not in lab.log_text(policy)
        assert o.check is None and o.events == [] and o.changes == {}
        assert m.counters == before[policy]
        m.check()


def test_lab_shows_what_the_kernel_refuses_instead_of_raising():
    lab = Lab()
    unaligned = lab.do("munmap", pid=1, addr=CHILD_PAGE + 1)["copy"]
    assert isinstance(unaligned.error, ValueError)
    assert unaligned.line.startswith("pid 1: munmap(0x7c01, 0x40) = -1 (addr 0x7c01 is not aligned")
    readonly = lab.do("mprotect", pid=1, addr=CHILD_PAGE, prot="r")["shared"]
    assert readonly.line == "pid 1: mprotect(0x7c00, 0x40, 'r') = 0"
    assert "SIGSEGV at 0x7c00 (write to a mapping without PROT_WRITE)" in lab.do("write", pid=1, addr=CHILD_PAGE)["shared"].line
    lab.do("exit", pid=1)
    again = lab.do("exit", pid=1)["copy"]
    assert isinstance(again.error, ptsim.ProcessExited) and "has exited" in again.line
    assert lab.live_pids() == []
    assert all(b.disabled for name, b in lab.buttons.items() if name != "reset")


def test_lab_read_returns_what_each_process_wrote():
    lab = Lab()
    lab.do("fork", pid=1)
    lab.do("write", pid=2, addr=CHILD_PAGE, data=b"child")
    parent = lab.do("read", pid=1, addr=CHILD_PAGE, length=5)
    child = lab.do("read", pid=2, addr=CHILD_PAGE, length=5)
    for policy in ("copy", "shared"):
        assert parent[policy].value == b"aaaaa" and child[policy].value == b"child"
        assert child[policy].line == "pid 2: read(0x7c00, 5) = b'child'"


def test_lab_picture_changes_after_every_call_even_a_read():
    lab = Lab()
    for call, kwargs in [("fork", {}), ("read", {"addr": CHILD_PAGE}), ("read", {"addr": CHILD_PAGE}), ("munmap", {"addr": CHILD_PAGE})]:
        pictures = {p: view.value for p, view in lab.pictures.items()}
        logs = {p: view.value for p, view in lab.logs.items()}
        lab.do(call, pid=1, **kwargs)
        for policy in lab.policies:
            assert lab.pictures[policy].value[:8] == b"\x89PNG\r\n\x1a\n"
            assert lab.pictures[policy].value != pictures[policy], call
            assert lab.logs[policy].value != logs[policy], call


def test_lab_failed_check_is_shown_in_the_log():
    lab = Lab()
    lab.machines["copy"].kernel.skip_tlb_flush = {"dup_mmap"}  # the parent keeps writable TLB entries
    lab.do("write", pid=1, addr=CHILD_PAGE)  # puts the page's translation in the TLB
    out = lab.do("fork", pid=1)
    assert out["copy"].check is not None and "machine.check() FAILED" in lab.log_text("copy")
    assert out["shared"].check is None and "FAILED" not in lab.log_text("shared")


def test_lab_buttons_and_views_carry_the_dom_hooks():
    lab = Lab(policies=("copy", "shared", "upper_wp"))
    assert "ptsim-lab" in lab._dom_classes
    assert [b.description for b in lab.buttons.values()] == list(LAB_CALLS) + ["reset"]
    for policy in lab.policies:
        assert "ptsim-picture" in lab.pictures[policy]._dom_classes and lab.pictures[policy].format == "png"
        assert "ptsim-log" in lab.logs[policy]._dom_classes
        assert "ptsim-counters" in lab.counter_views[policy]._dom_classes
    assert repr(lab) == "Lab(arch='toy', policies=('copy', 'shared', 'upper_wp'))"
    stacked = Lab(policies=("shared",), side_by_side=False)
    assert stacked.pictures["shared"] in stacked.children[-1].children[0].children


def test_lab_buttons_play_the_call_with_the_controls_values():
    lab = Lab()
    lab.buttons["fork"].click()
    assert lab.live_pids() == [1, 2] and lab.pid.value == 1
    lab.pid.value = 2
    assert lab.addr.options[0] == "0x7c00" and len(lab.addr.options) == 16
    lab.addr.value, lab.data.value = "0x7c40", "hi"
    lab.buttons["write"].click()
    assert lab.last("shared").line == "pid 2: write(0x7c40, b'hi')"
    assert lab.processes("copy")[2].read(0x7C40, 2) == b"hi"
    lab.pages.value, lab.prot.value = 2, ""
    lab.buttons["mprotect"].click()
    assert lab.last("copy").line == "pid 2: mprotect(0x7c40, 0x80, '') = 0"
    calls = lab.calls
    lab.addr.value = "nonsense"
    lab.buttons["munmap"].click()
    assert lab.calls == calls and "not a hex address" in lab.status.value


def test_lab_reset_starts_over():
    lab = Lab()
    lab.do("fork", pid=1)
    lab.do("exit", pid=1)
    lab.buttons["reset"].click()
    m, _ = twin("shared", [])
    assert lab.calls == 0 and lab.live_pids() == [1]
    assert lab.machines["shared"].counters == m.counters
    assert lab.log_text("shared") == ""


def test_lab_setup_can_start_with_several_processes():
    def setup(m):
        p = m.spawn()
        a = p.mmap(addr=0x4000, length=512)
        p.write(a, b"s" * 512)
        return [p, p.fork()]

    lab = Lab(policies=("shared",), setup=setup)
    assert lab.live_pids() == [1, 2] and lab.addr.value == "0x4000"
    assert lab.machines["shared"].counters["tables_shared"] == 1


def test_lab_bad_arguments_raise_value_error_naming_them():
    for kwargs, name in [
        ({"arch": "arm"}, "arch"),
        ({"policies": ("copy", "cow")}, "policies"),
        ({"policies": ()}, "policies"),
        ({"policies": "copy"}, "policies"),
        ({"policies": ("copy", "copy")}, "policies"),
        ({"ram": 100}, "ram"),
        ({"setup": "one process"}, "setup"),
        ({"setup": lambda m: []}, "setup"),
        ({"setup": lambda m: [m.spawn()] * (m.policy == "copy") + [m.spawn()]}, "setup"),
        ({"side_by_side": "yes"}, "side_by_side"),
    ]:
        with pytest.raises(ValueError, match=name):
            Lab(**kwargs)
    lab = Lab()
    counters = {p: m.counters for p, m in lab.machines.items()}
    for args, kwargs, name in [
        (("clone",), {"pid": 1}, "call"),
        (("fork",), {"pid": 9}, "pid"),
        (("fork",), {"pid": True}, "pid"),
        (("write",), {"pid": 1, "addr": "0x7c00"}, "addr"),
        (("write",), {"pid": 1}, "addr"),
        (("fork",), {"pid": 1, "addr": CHILD_PAGE}, "addr"),
        (("write",), {"pid": 1, "addr": CHILD_PAGE, "data": "x"}, "data"),
        (("read",), {"pid": 1, "addr": CHILD_PAGE, "length": 1.5}, "length"),
        (("mprotect",), {"pid": 1, "addr": CHILD_PAGE, "prot": None}, "prot"),
    ]:
        with pytest.raises(ValueError, match=name):
            lab.do(*args, **kwargs)
    assert lab.calls == 0 and {p: m.counters for p, m in lab.machines.items()} == counters
    with pytest.raises(ValueError, match="policy"):
        lab.log_text("upper_wp")


# -- the stepper ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["copy", "shared", "upper_wp"])
def test_stepper_over_a_fork_has_one_step_per_event_and_leaves_the_machine_as_a_direct_fork(policy):
    m, p, _ = toy_parent(policy)
    twin_m, twin_p, _ = toy_parent(policy)
    with twin_m.trace() as events:
        twin_p.fork()
    s = Stepper(m, p.fork)
    assert len(s) == len(events) == s.slider.max and s.events == list(events)
    assert isinstance(s.result, ptsim.Process) and s.result.pid == 2
    assert m.counters == twin_m.counters
    assert np.array_equal(m.kernel.phys.bytes, twin_m.kernel.phys.bytes)
    m.check()


@pytest.mark.parametrize("policy", ["copy", "shared"])
def test_stepper_fork_steps_show_each_table_change_when_it_is_reported(policy):
    m, p, _ = toy_parent(policy)
    s = Stepper(m, p.fork)
    tables = m.kernel.phys.tables
    for k, e in enumerate(s.events, start=1):
        at = s.machine_at(k)
        if e.action == "share_table":  # the use count the event reports is the snapshot's
            assert at.kernel.mem_map.refcount[e.table] == e.count == 2
        if e.action == "copy_table":  # the child's table holds the parent's pages
            pfns = at.kernel.pfns_of(at.kernel.phys.tables[e.frame])
            assert np.array_equal(pfns, m.kernel.pfns_of(tables[e.table])) and pfns.any()
        assert 2 in table_graph(at).graph["pids"]  # the child is drawn from its first event on
        if k > 1:
            assert s.picture_at(k) != s.picture_at(k - 1)


def test_stepper_hands_its_events_to_an_outer_trace():
    m, p, _ = toy_parent("shared")
    with m.trace() as outer:
        s = Stepper(m, p.fork)
    assert outer == s.events and m.kernel.tracer.events is None


def test_stepper_draws_the_processes_asked_for_and_the_child_the_call_creates():
    m, p, _ = toy_parent("shared")
    only_parent = Stepper(m, p.fork, processes=[p])
    twin_m, twin_p, _ = toy_parent("shared")
    everyone = Stepper(twin_m, twin_p.fork)
    assert [only_parent.picture_at(k) == everyone.picture_at(k) for k in range(1, len(everyone) + 1)] == [True] * len(everyone)
    third = Stepper(m, p.fork, processes=[p])  # pid 2 is left out; pid 3 is born
    assert third.picture_at(2) != Stepper(twin_m, twin_p.fork).picture_at(2)


def test_stepper_works_on_x86_64():
    m = ptsim.Machine(arch="x86_64", policy="upper_wp", ram=16 << 20)
    p = m.spawn()
    a = p.mmap(addr=2 << 20, length=4 << 20)
    p.write(a, b"x" * (4 << 20))
    s = Stepper(m, p.fork)
    assert [e.action for e in s.events].count("share_table") == 2
    assert s.picture_at(len(s))[:4] == b"\x89PNG"
    m.check()


def test_stepper_over_a_child_write_shows_the_unshare_then_the_copy():
    m, p, a = toy_parent("shared")
    child = p.fork()
    old = m.kernel.slot_table(m.kernel.pmd_slot(child.mm, a))
    s = Stepper(m, lambda: child.write(a, b"x"))
    actions = [e.action for e in s.events]
    assert actions[0] == "unshare_table" and "copy_page" in actions
    unshare = s.machine_at(1)
    assert unshare.kernel.mem_map.refcount[old] == 1  # was 2 before the call
    new = s.events[0].frame
    assert unshare.kernel.slot_table(unshare.kernel.pmd_slot(unshare.kernel.tasks[2].mm, a)) == new
    k = actions.index("copy_page") + 1
    copy_page = s.events[k - 1]
    old_page, new_page = copy_page.detail["from"], copy_page.frame

    def child_maps(step):
        at = s.machine_at(step).kernel
        return at.entry_pfn(at.follow_pte(at.tasks[2].mm, a))

    # copy_page is reported once the page is copied and the child's entry points at the copy:
    copied = s.machine_at(k).kernel
    assert bytes(copied.phys.frame_bytes(new_page)) == bytes(copied.phys.frame_bytes(old_page))
    assert child_maps(k - 1) == old_page and child_maps(k) == new_page
    assert child.read(a, 1) == b"x"


def test_stepper_over_an_exit_draws_the_exiting_process_until_its_tables_go():
    m, p, _ = toy_parent("shared")
    child = p.fork()
    s = Stepper(m, child.exit, processes=[p, child])
    assert child.exited and 2 not in m.kernel.mms
    assert s.events[0].func == "exit_mmap"
    first = s.machine_at(1)
    assert 2 in table_graph(first).graph["pids"]
    zap = s.events[0]
    if zap.action == "drop_shared_table":
        assert first.kernel.mem_map.refcount[zap.table] == zap.count == 1
    else:
        assert not first.kernel.phys.tables[zap.table].any()
    for k in range(1, len(s) + 1):
        s.step = k
        assert s.picture.value == s.picture_at(k)
    m.check()


def test_stepper_controls_move_and_mark_the_step():
    m, p, _ = toy_parent("shared")
    s = Stepper(m, p.fork)
    assert s.step == 1 and s.prev.disabled and not s.next.disabled
    assert "ptsim-stepper" in s._dom_classes and "ptsim-picture" in s.picture._dom_classes and "ptsim-log" in s.log_view._dom_classes
    first = s.picture.value
    s.next.click()
    assert s.step == 2 and s.picture.value != first and s.picture.value == s.picture_at(2)
    lines = s.log_text().splitlines()
    assert [line[:2] for line in lines] == ["  ", "  ", "> "] + ["  "] * (len(s) - 2)
    assert "&gt; copy_page_range" in s.log_view.value
    s.step = len(s)
    s.next.click()
    assert s.step == len(s) and s.next.disabled
    s.prev.click()
    assert s.step == len(s) - 1


def test_snapshot_is_a_faithful_copy_that_the_machine_does_not_touch():
    m, p, a = toy_parent("shared")
    copy = snapshot(m)
    copy.check()
    assert np.array_equal(copy.kernel.phys.bytes, m.kernel.phys.bytes)
    assert np.shares_memory(copy.kernel.phys.tables, copy.kernel.phys.bytes)  # still one memory, two views
    assert not np.shares_memory(copy.kernel.phys.bytes, m.kernel.phys.bytes)
    pa = p.translate(a)
    p.write(a, b"changed")
    assert m.kernel.phys.read(pa, 7) == b"changed" and copy.kernel.phys.read(pa, 7) == bytes(range(7))


def test_stepper_bad_arguments_raise_value_error_naming_them():
    m, p, a = toy_parent("shared")
    counters = m.counters
    with pytest.raises(ValueError, match="machine"):
        Stepper("machine", p.fork)
    with pytest.raises(ValueError, match="call"):
        Stepper(m, "fork")
    with pytest.raises(ValueError, match="processes"):
        Stepper(m, p.fork, processes=[7])
    assert m.counters == counters and len(m.kernel.tasks) == 1
    with pytest.raises(ptsim.SegmentationFault):
        Stepper(m, lambda: p.write(0x100, b"x"))
    with pytest.raises(ValueError, match="call"):
        Stepper(m, lambda: p.read(a, 1))  # a present page: no kernel event
    s = Stepper(m, p.fork)
    for bad in (0, len(s) + 1, "1", True):
        with pytest.raises(ValueError, match="step"):
            s.step = bad
        with pytest.raises(ValueError, match="step"):
            s.machine_at(bad)


# -- the cost sliders -------------------------------------------------------------------------


def snapshotting_parent(policy, size, fraction, pattern, seed=0):
    """The cost chapters' scenario, written out: touch all, fork, rewrite a fraction."""
    page = 4096
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=4 * size)
    p = m.spawn()
    a = p.mmap(addr=2 << 20, length=size)
    for i in range(size // page):
        p.write(a + i * page, b"t")
    before = m.counters
    c = p.fork()
    n = round(fraction * (size // page))
    pages = range(n) if pattern == "first" else sorted(random.Random(seed).sample(range(size // page), n))
    for i in pages:
        p.write(a + i * page, b"w")
    m.check()
    after = m.counters
    tables = sum(d["kind"] == "table" for _, d in table_graph(m, [p, c]).nodes(data=True))
    return {name: after.get(name, 0) - before.get(name, 0) for name in ("tables_allocated", "ptes_copied", "pages_copied")} | {"table_kib": tables * page // 1024}


@pytest.mark.parametrize("policy", ["copy", "shared", "upper_wp"])
@pytest.mark.parametrize("fraction, pattern", [(0.0, "random"), (0.3, "first"), (0.3, "random"), (1.0, "random")])
def test_fork_cost_matches_a_direct_run(policy, fraction, pattern):
    assert fork_cost("x86_64", policy, 4 << 20, fraction, pattern) == snapshotting_parent(policy, 4 << 20, fraction, pattern)


def test_fork_cost_shows_sharing_saves_tables_only_until_they_are_written():
    untouched = {p: fork_cost("x86_64", p, 8 << 20, 0.0) for p in ("copy", "shared")}
    assert untouched["copy"]["ptes_copied"] == 2048 and untouched["shared"]["ptes_copied"] == 0
    assert untouched["shared"]["table_kib"] < untouched["copy"]["table_kib"]
    spread = {p: fork_cost("x86_64", p, 8 << 20, 0.1) for p in ("copy", "shared")}  # every table gets a write
    assert spread["shared"]["table_kib"] == spread["copy"]["table_kib"]


def test_cost_explorer_shows_fork_cost_for_the_sliders():
    e = CostExplorer(sizes_mib=(1, 2))
    assert "ptsim-cost" in e._dom_classes and "ptsim-picture" in e.picture._dom_classes
    assert e.size.value == 2 and e.fraction.value == 0.0 and e.pattern.value == "random"
    assert e.values() == {p: fork_cost("x86_64", p, 2 << 20, 0.0, "random") for p in ("copy", "shared", "upper_wp")}
    picture = e.picture.value
    e.fraction.value = 0.2
    assert e.picture.value != picture
    shown = e.values()
    assert shown == e.values(2, 0.2, "random") and shown is e.values(2, 0.2, "random")  # cached
    assert f"{shown['shared']['ptes_copied']:>10}" in e.numbers.value
    e.pattern.value = "first"
    assert e.values()["shared"] == fork_cost("x86_64", "shared", 2 << 20, 0.2, "first")


def test_cost_bad_arguments_raise_value_error_naming_them():
    for args, name in [
        (("arm", "copy", 1 << 20, 0.5), "arch"),
        (("x86_64", "cow", 1 << 20, 0.5), "policy"),
        (("x86_64", "copy", 1000, 0.5), "size"),
        (("x86_64", "copy", 0, 0.5), "size"),
        (("x86_64", "copy", 1 << 20, 1.5), "fraction"),
        (("x86_64", "copy", 1 << 20, True), "fraction"),
        (("x86_64", "copy", 1 << 20, 0.5, "middle"), "pattern"),
        (("x86_64", "copy", 1 << 20, 0.5, "first", "1"), "seed"),
    ]:
        with pytest.raises(ValueError, match=name):
            fork_cost(*args)
    for kwargs, name in [
        ({"arch": "arm"}, "arch"),
        ({"sizes_mib": ()}, "sizes_mib"),
        ({"sizes_mib": (0,)}, "sizes_mib"),
        ({"arch": "toy", "sizes_mib": (1,)}, "sizes_mib"),
        ({"policies": ("copy", "copy")}, "policies"),
        ({"fractions": 0}, "fractions"),
        ({"seed": 1.0}, "seed"),
    ]:
        with pytest.raises(ValueError, match=name):
            CostExplorer(**kwargs)
