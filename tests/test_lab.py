"""The lab's grader (ptsim.lab.check) and the broken kernels (ptsim.broken): every broken
kernel is caught, with its rule, by a short scenario that replays; the correct policies pass;
a policy that raises, returns garbage or loops is reported, never raised. Budgets are small:
the time lab.check takes at its defaults is measured in the report, not here."""

import threading
import time

import matplotlib.figure
import pytest

from ptsim import broken, lab
from ptsim.kernel.fork import CopyPolicy, SharedPolicy, UpperWrprotectPolicy

CORRECT = {
    "shared": SharedPolicy(),
    "upper_wp": UpperWrprotectPolicy(),
    "shared/read_fault=unshare": SharedPolicy(read_fault="unshare"),
    "shared/wrprotect=every_fork": SharedPolicy(wrprotect="every_fork"),
}


@pytest.mark.parametrize("bug", broken.CATALOGUE, ids=lambda bug: bug.policy.__name__)
def test_every_broken_kernel_is_caught_with_its_rule_by_a_short_scenario_that_replays(bug):
    policy = bug.policy()
    result = lab.check(policy, machines=0)
    assert not result.ok and result.rule == bug.rule, str(result)
    assert 0 < len(result.calls) <= result.original_length
    again = lab.replay(result.calls, policy)
    assert not again.ok and again.failure.signature() == result.failure.signature()
    assert again.failure.line == result.failure.line == len(lab.parse(result.calls)) - 1, "the failure is at the last line"
    assert lab.replay(result.calls, SharedPolicy()).ok, "the shrunk scenario must pass on a correct policy"
    assert f"rule {bug.rule} " in str(result) and "ptsim.lab.replay(result.calls, policy)" in str(result)


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_sharing_policies_pass(name):
    result = lab.check(CORRECT[name], machines=4)
    assert result.ok, str(result)
    assert result.ran["rules"] == len(lab.RULES) and result.ran["machines"] == 4
    assert str(result).startswith("PASSED") and f"{len(lab.RULES)} rule scenario(s), 4 random machine(s)" in str(result)
    assert result.figure() is None


def test_classic_fork_is_judged_by_the_oracle_and_random_machines_only():
    result = lab.check(CopyPolicy(), machines=3)
    assert result.ok and not result.sharing and result.ran["rules"] == 0
    assert "shares no table" in str(result)


def test_random_machines_alone_catch_a_broken_kernel():
    result = lab.check(broken.NoWrprotect(), only=[], machines=3)
    assert not result.ok and result.ran["rules"] == 0 and result.found_by.startswith("random machine")
    assert result.rule == 2 and result.failure.kind == "checker"
    assert len(result.calls) < result.original_length, "shrunk"


def test_only_runs_the_rules_named():
    result = lab.check(SharedPolicy(), only=[1, 8])
    assert result.ok and (result.ran["rules"], result.ran["machines"]) == (2, 0)
    with pytest.raises(ValueError, match="have no scenario"):
        lab.check(SharedPolicy(), only=[18])
    with pytest.raises(ValueError, match="CopyPolicy"):
        lab.check("shared")
    with pytest.raises(ValueError, match="nothing to run"):
        lab.check(SharedPolicy(), only=[])


def test_play_gives_the_machine_its_processes_and_the_last_calls_events():
    played = lab.play(lab.RULES[4][1], SharedPolicy())
    assert set(played.processes) == {"p0", "p1"}
    assert [e.action for e in played.events if e.action == "unshare_table"] == [], "the last line is a read"
    played = lab.play(lab.RULES[4][1].strip().splitlines()[:5], SharedPolicy())
    assert "unshare_table" in [e.action for e in played.events]
    played.machine.check()


class Raises(SharedPolicy):
    def unshare(self, k, mm, slot, addr, func):
        return {}["no such key"]


class ReturnsGarbage(SharedPolicy):
    def prepare_pte_write(self, k, mm, slot, addr, func):
        return "the table"


class Loops(SharedPolicy):
    def zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func):
        while True:
            pass


def test_a_policy_that_raises_is_reported_at_its_own_line():
    result = lab.check(Raises(), machines=0)
    assert not result.ok and result.failure.kind == "exception" and result.rule is None
    assert "KeyError" in result.failure.message
    assert result.failure.where.startswith("in Raises.unshare, line ") and "no such key" in result.failure.where


def test_a_policy_that_returns_garbage_is_reported():
    result = lab.check(ReturnsGarbage(), machines=0)
    assert not result.ok and result.failure.kind == "bad type" and result.rule is None
    assert "ReturnsGarbage.prepare_pte_write returned 'the table'" in result.failure.message


def test_an_endless_loop_is_cut_by_the_time_limit():
    start = time.monotonic()
    result = lab.check(Loops(), machines=0, limit=0.3)
    assert time.monotonic() - start < 3
    assert not result.ok and result.failure.kind == "timeout" and "0.3 s" in str(result)
    assert lab.parse(result.calls)[-1].op in ("exit", "munmap", "mmap"), "cut at the call that zaps"


def test_the_time_limit_works_off_the_main_thread_too():
    found = []
    thread = threading.Thread(target=lambda: found.append(lab.check(Loops(), machines=0, limit=0.3)))
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and found[0].failure.kind == "timeout"


def test_the_stub_says_which_step_is_not_written():
    result = lab.check(lab.Stub(), machines=0)
    assert result.failure.kind == "unwritten" and result.rule is None
    assert "step 1" in result.failure.message and result.failure.where.startswith("in Stub.copy_pte_tables")


def test_figure_draws_the_tables_at_the_failing_step():
    result = lab.check(broken.NoPartialUnshare(), only=[11])
    fig = result.figure()
    assert isinstance(fig, matplotlib.figure.Figure)
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    # An expect line fails: the picture is of the call it reads, the partial munmap.
    assert result.failure.kind == "expect" and result.calls[result.failure.line - 1].startswith("p0 munmap")
    title = f"After line {result.failure.line}: {result.calls[result.failure.line - 1]} (line {result.failure.line + 1} fails)"
    assert title in texts


@pytest.mark.parametrize("line, error", [
    ("expect nothing", "expect what"),
    ("expect use_count p0 0x200000000000", "takes"),
    ("expect same_table p0 p7 0x200000000000", "p7 is not alive"),
    ("p0 swap_out", "swap_out takes"),
])
def test_bad_lab_lines_are_refused_with_their_line(line, error):
    with pytest.raises(ValueError, match=f"line 2: .*{error}"):
        lab.parse(["p0 mmap 0x200000000000 4K rw private", line])


# -- find the bug ----------------------------------------------------------------------------

STUDENTS = ["ann", "bob", "carol", "dev", "eve"]


@pytest.mark.parametrize("student", STUDENTS)
def test_an_assigned_kernel_hides_its_bug_and_is_caught_like_it(student):
    bug, number = broken._pick(student)
    kernel = broken.assigned(student)
    assert type(kernel).__name__ == f"Kernel{number}"
    assert set(broken.FUNCTIONS) <= set(vars(type(kernel))), "it overrides all six methods"
    assert bug.policy.__name__ not in repr(kernel) + (type(kernel).__doc__ or "")
    result = lab.check(kernel, machines=0)
    assert (result.rule, result.withheld) == (None, bug.rule), "check finds the rule and keeps it to itself"
    assert result.found_by == "a rule scenario" and f"rule {bug.rule}" not in str(result)


def test_students_get_different_kernels():
    assert len({broken._pick(s)[0] for s in STUDENTS + ["fay", "gus", "hal"]}) > 2


@pytest.mark.parametrize("student", STUDENTS)
def test_find_the_bug_is_graded_from_the_students_id(student):
    bug, _ = broken._pick(student)
    grade = broken.FIND_THE_BUG.check
    assert grade(bug.function, bug.rule, student=student).ok
    assert all(grade(bug.function, rule, student=student).ok for rule in bug.also)
    wrong_function = next(f for f in broken.FUNCTIONS if f != bug.function)
    wrong_rule = next(r for r in range(1, 20) if r not in (bug.rule, *bug.also))
    assert str(grade(wrong_function, bug.rule, student=student)).startswith("Half right")
    assert str(grade(bug.function, wrong_rule, student=student)).startswith("Half right")
    assert str(grade(wrong_function, wrong_rule, student=student)).startswith("Not ")
    assert str(grade("fork", 1, student=student)).startswith("Not an answer")
    assert str(grade(bug.function, 20, student=student)).startswith("Not an answer")
