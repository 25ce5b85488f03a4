"""The book's workloads: a shell running a command by fork and exec (sharing rule 18)."""

import pytest

import ptsim
from ptsim.peek import counters_gained
from ptsim.workloads import ARENA_MAX, SHELL_LAYOUT, WRITTEN_BEFORE_EXEC, run_command, shell


def tables_of(m, names):
    """The distinct last-level tables the named mappings lie in."""
    span = m.arch.pte_span
    return {start // span for name in names for start, length, _ in [SHELL_LAYOUT[name]]
            for start in range(start, start + length, span)}


@pytest.mark.parametrize("arch", ["i386", "x86_64"])
@pytest.mark.parametrize("policy", ["shared", "upper_wp"])
def test_a_child_that_writes_before_exec_unshares_every_table_it_writes(policy, arch):
    m = ptsim.Machine(arch=arch, policy=policy, ram=32 << 20)
    sh = shell(m)
    before = m.counters
    run_command(sh, writes_before_exec=True)
    gained = counters_gained(m, before)
    assert len(tables_of(m, SHELL_LAYOUT)) == 3  # program, interp, stack: as Phillips counted
    assert gained["tables_shared"] == 3
    assert gained["tables_unshared"] == len(tables_of(m, WRITTEN_BEFORE_EXEC)) == 3
    m.check()


@pytest.mark.parametrize("arch", ["i386", "x86_64"])
def test_a_child_that_writes_nothing_before_exec_only_drops_counts(arch):
    m = ptsim.Machine(arch=arch, policy="shared", ram=32 << 20)
    sh = shell(m)
    before = m.counters
    run_command(sh, writes_before_exec=False)
    gained = counters_gained(m, before)
    assert gained["tables_shared"] == 3 and gained.get("tables_unshared", 0) == 0
    assert gained.get("ptes_copied", 0) == 0 and gained.get("pages_copied", 0) == 0
    m.check()


def test_under_copy_the_child_copies_every_entry_either_way():
    copied = []
    for writes in (False, True):
        m = ptsim.Machine(arch="x86_64", policy="copy", ram=32 << 20)
        sh = shell(m)
        before = m.counters
        run_command(sh, writes_before_exec=writes)
        copied.append(counters_gained(m, before)["ptes_copied"])
    pages = sum(length for _, length, prot in SHELL_LAYOUT.values() if "w" in prot) // 4096
    assert copied[0] == copied[1] >= pages


def test_shell_refuses_a_geometry_it_has_no_layout_for():
    with pytest.raises(ValueError, match="m: "):
        shell(ptsim.Machine(arch="toy", ram=1 << 14))


@pytest.mark.parametrize("arch", ["i386", "x86_64"])
def test_an_arena_is_copied_by_copy_and_only_shared_and_dropped_by_a_child_that_writes_first(arch):
    arena = 3 << 20  # two tables on x86_64, one on i386
    copied, shared = {}, {}
    for policy in ("copy", "shared"):
        for size in (0, arena):
            m = ptsim.Machine(arch=arch, policy=policy, ram=40 << 20)
            sh = shell(m, arena=size)
            before = m.counters
            with m.trace() as events:
                run_command(sh, writes_before_exec=True)
            gained = counters_gained(m, before)
            copied[policy, size] = gained.get("ptes_copied", 0)
            shared[policy, size] = (gained.get("tables_shared", 0),
                                    sum(e.action == "drop_shared_table" for e in events))
            m.check()
    arena_tables = -(-arena // m.arch.pte_span)
    assert copied["copy", arena] - copied["copy", 0] == arena // 4096
    assert copied["shared", arena] == copied["shared", 0]  # the arena's tables are never unshared
    assert shared["shared", arena] == (3 + arena_tables, arena_tables)
    assert shared["copy", arena] == (0, 0)


@pytest.mark.parametrize("arena", [-4096, 100, ARENA_MAX + 4096, 1.5])
def test_shell_refuses_an_arena_that_is_not_whole_pages_that_fit(arena):
    with pytest.raises(ValueError, match="arena must be"):
        shell(ptsim.Machine(arch="x86_64", ram=32 << 20), arena=arena)
