"""Exercises and challenges: every computed answer is held to an independent
fact of the machine (a translation, a fault count, who points at a table), never to itself."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ptsim
from ptsim.exercises import (
    FAULT_KINDS,
    Challenge,
    Exercise,
    arch_is,
    observe,
    shared_without_parent,
    status_is,
    use_count_is,
)
from ptsim.kernel import COUNTERS
from ptsim.kernel.page import ZERO_PFN
from ptsim.peek import list_tables, table_pages, use_count

ROOT = Path(__file__).resolve().parent.parent
TOY = dict(arch="toy", ram=1 << 14)
PAGE = ptsim.ARCHES["toy"].page_size
SPAN = ptsim.ARCHES["toy"].pte_span


def toy(policy="shared"):
    return ptsim.Machine(policy=policy, **TOY)


def leaf_table(p, addr):
    """The frame of the last-level table `p` reaches for `addr`, read from its upper entry."""
    k = p.machine.kernel
    return k.slot_table(k.pmd_slot(p.mm, addr))


def tables_held(m, processes):
    """Page-table pages held, from the counters: what was allocated and not freed, plus a root
    for each live process (roots are not counted as allocations)."""
    c = m.counters
    return c.get("tables_allocated", 0) - c.get("tables_freed", 0) + len(processes)


def child_writes_page_3(policy="shared"):
    m = toy(policy)
    p = m.spawn()
    a = p.mmap(addr=2 * SPAN, length=SPAN)
    for i in range(8):
        p.write(a + i * PAGE, b"x")
    c = p.fork()
    c.write(a + 3 * PAGE, b"y")
    return m


def three_sharers(policy="shared"):
    m = toy(policy)
    p = m.spawn()
    a = p.mmap(addr=2 * SPAN, length=SPAN)
    p.write(a, b"x")
    return m, p, p.fork(), p.fork(), a


# -- Exercise --------------------------------------------------------------------------------


def test_exercise_answer_is_the_machines_table_count():
    ex = Exercise("How many page-table pages does the machine hold?", child_writes_page_3, table_pages)
    m = ex.state
    assert ex.answer == tables_held(m, [t for t in m.kernel.tasks.values() if not t.exited])
    assert ex.answer == len(list_tables(m))
    assert ex.check(ex.answer) and not ex.check(ex.answer + 1)


def test_diagnose_recognises_the_answer_of_classic_fork():
    def sharers(policy="shared"):
        m, p, c1, c2, a = three_sharers(policy)
        return p, a

    ex = Exercise(
        "What is the use count of p's table?",
        sharers,
        lambda s: use_count(*s),
        diagnose=lambda s, answer, given: "that is classic fork: each child got its own copy" if given == use_count(*sharers("copy")) else None,
        hint="count the upper entries",
    )
    p, a = ex.state
    frames = [leaf_table(ptsim.Process(p.machine, t), a) for t in p.machine.kernel.tasks.values()]
    assert ex.answer == frames.count(leaf_table(p, a)) == 3
    assert str(ex.check(1)) == "Not 1: that is classic fork: each child got its own copy"
    assert str(ex.check(2)) == "Not 2. Hint: count the upper entries"
    assert str(ex.check(3)) == "Right: 3."


def test_answers_are_normalised_and_bools_are_not_answers():
    ex = Exercise("?", child_writes_page_3, table_pages, show=hex)
    n = ex.answer
    for given in (n, np.int64(n), hex(n), f"  {n} ", str(n)):
        assert ex.check(given), given
    for given in (True, None, 6.0, ""):
        assert str(ex.check(given)).startswith("Not an answer")
    assert not ex.check([n])
    assert str(ex.check(n)) == f"Right: {hex(n)}."


def test_choices_accept_the_letter_or_the_text():
    def fewer_frames():
        free = {policy: three_sharers(policy)[0].free_frames for policy in ("copy", "shared")}
        return free

    ex = Exercise("Which policy leaves more frames free?", fewer_frames, lambda free: max(free, key=free.get), choices=("copy", "shared"))
    assert ex.state["shared"] > ex.state["copy"]  # sharing saves the children's tables
    assert ex.answer == "shared"
    assert ex.check("b") and ex.check(" Shared") and not ex.check("a") and not ex.check("c")
    assert str(ex) == "Which policy leaves more frames free?\n  (a) copy\n  (b) shared"


def test_list_answers_say_which_items_are_wrong():
    ex = Exercise("?", lambda: None, lambda s: ("zero", "anon", "wp_copy"))
    assert ex.check(["ZERO", "anon", "wp_copy"])
    assert str(ex.check(["zero", "zero", "zero"])) == "Not [zero, zero, zero]: items 2, 3 are not right."
    assert str(ex.check(["zero"])) == "Not [zero]: give a list of 3 answers, one per item, in order."


def test_a_wrong_list_answer_gets_the_hint_too():
    ex = Exercise("?", lambda: None, lambda s: (5, 2), hint="count the pgd.")
    assert str(ex.check([4, 1])) == "Not [4, 1]: items 1, 2 are not right. Hint: count the pgd."
    assert str(ex.check([4])) == "Not [4]: give a list of 2 answers, one per item, in order. Hint: count the pgd."


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=3), "prompt"),
        (dict(scenario="m"), "scenario"),
        (dict(scenario=lambda a, b: None), "scenario"),
        (dict(scenario=lambda rng: None), "key"),  # numbers drawn for a student need the exercise's name
        (dict(student="ada"), "student"),  # a fixed scenario is the same for every student
        (dict(key=""), "key"),
        (dict(choices=("a", "a")), "choices"),
        (dict(explain=3), "explain"),
        (dict(hint=None), "hint"),
    ],
)
def test_bad_exercise_definitions_raise_value_error_naming_the_argument(kwargs, message):
    args = dict(prompt="?", scenario=child_writes_page_3, question=table_pages) | kwargs
    with pytest.raises(ValueError, match=message):
        Exercise(args.pop("prompt"), args.pop("scenario"), args.pop("question"), **args)


@pytest.mark.parametrize(
    "kwargs",
    [dict(question=lambda s: True), dict(question=lambda s: None), dict(choices=("copy", "shared"))],  # 6 is not a choice
)
def test_a_question_that_gives_no_answer_is_refused_at_the_first_check(kwargs):
    args = dict(scenario=child_writes_page_3, question=table_pages) | kwargs
    ex = Exercise("?", args.pop("scenario"), args.pop("question"), **args)
    with pytest.raises(ValueError, match="question: returned"):
        ex.check(6)


# -- Challenge -------------------------------------------------------------------------------


def test_use_count_goal_is_met_by_three_sharers_only():
    ch = Challenge("Make a table with use count 3.", use_count_is(3))
    m, p, c1, c2, a = three_sharers()
    assert [leaf_table(q, a) for q in (p, c1, c2)].count(leaf_table(p, a)) == 3
    verdict = ch.check(m)
    assert verdict and f"frame {leaf_table(p, a):#x} has use count 3: pids 1, 2, 3" in str(verdict)
    c2.exit()
    assert str(ch.check(p)) == f"Not yet: no page-table page has use count 3; the highest is 2 (frame {leaf_table(p, a):#x}, pids 1, 2)."


def test_sibling_goal_needs_the_parent_to_have_unshared():
    ch = Challenge("Make a table shared by two siblings but not their parent.", shared_without_parent())
    m, p, c1, c2, a = three_sharers()
    assert not ch.check(p, c1, c2)
    p.write(a, b"p")  # the parent unshares; the children still share the old table
    assert leaf_table(c1, a) == leaf_table(c2, a) != leaf_table(p, a)
    assert ch.check(p, c1, c2)


def sibling_case():
    """Two children share the table their parent has unshared (Phillips' "Confused yet?")."""
    m, p, c1, c2, a = three_sharers()
    p.write(a, b"p")
    return m, p, c1, c2, a


def test_sibling_goal_rejects_wrong_setups_saying_why():
    ch = Challenge("?", shared_without_parent())
    m, p, c1, c2, a = sibling_case()
    assert str(ch.check(p, c1, c1)) == f"Not yet: pass three different processes (parent, a, b), not pids {p.pid}, {c1.pid}, {c1.pid}."
    assert str(ch.check(c1, c1, c2)).startswith("Not yet: pass three different processes")
    # a child passed as the parent: p was forked by nobody, let alone by c1
    assert str(ch.check(c1, p, c2)) == (f"Not yet: pid {p.pid} is not a child of pid {c1.pid}: it was forked by "
                                        "nobody (it was spawned); fork the two siblings from the parent.")
    # an unrelated process created after the siblings, passed as their parent
    late = m.spawn()
    assert leaf_table(late, a) is None  # it reaches no table at all, so the table test alone passes it
    assert str(ch.check(late, c1, c2)).startswith(f"Not yet: pid {c1.pid} is not a child of pid {late.pid}: it was forked by pid {p.pid}")


def test_sibling_goal_rejects_an_older_unrelated_process_as_the_parent():
    m = toy()
    stranger = m.spawn()  # older than the family, and no relative
    p = m.spawn()
    a = p.mmap(addr=2 * SPAN, length=SPAN)
    p.write(a, b"x")
    c1, c2 = p.fork(), p.fork()
    p.write(a, b"p")
    assert leaf_table(stranger, a) is None  # the table test alone would pass it
    assert str(Challenge("?", shared_without_parent()).check(stranger, c1, c2)).startswith(
        f"Not yet: pid {c1.pid} is not a child of pid {stranger.pid}")


def test_sibling_goal_rejects_a_parent_and_its_child_as_siblings():
    m, p, c1, c2, a = three_sharers()
    c2.exit()
    p.write(a, b"p")  # the parent unshares
    grandchild = c1.fork()  # c1 and its own child now share the old table
    assert leaf_table(c1, a) == leaf_table(grandchild, a) != leaf_table(p, a)
    assert str(Challenge("?", shared_without_parent()).check(p, c1, grandchild)).startswith(
        f"Not yet: pid {grandchild.pid} is not a child of pid {p.pid}: it was forked by pid {c1.pid}")


def test_arch_goal_rejects_another_geometry_saying_which():
    ch = Challenge("Use count 3 on a toy machine.", arch_is("toy"), use_count_is(3))
    big = ptsim.Machine(arch="x86_64", policy="shared", ram=8 << 20)
    p = big.spawn()
    a = p.mmap(length=1 << 20)
    p.write(a, b"x")
    p.fork(), p.fork()
    assert Challenge("?", use_count_is(3)).check(big)  # the count alone is met...
    assert str(ch.check(big)) == 'Not yet: this machine is x86_64, and the task asks for toy: build it with ptsim.Machine(arch="toy", ...).'
    m = three_sharers()[0]
    assert str(ch.check(m)).startswith("Right: the machine is toy; the pte table in frame")


def test_status_goal_reads_vmpte():
    m = ptsim.Machine(arch="x86_64", policy="shared", ram=8 << 20)
    p = m.spawn()
    a = p.mmap(length=4 << 20)  # two last-level tables' worth
    p.write(a, b"x")
    p.write(a + (2 << 20), b"x")
    c = p.fork()
    kb = 4 * len([t for t in list_tables(c) if t.level > 0])  # every table below the root, 4 kB each
    assert Challenge("VmPTE", status_is("VmPTE", kb)).check(c)
    assert str(Challenge("VmPTE", status_is("VmPTE", kb + 4)).check(c)) == f"Not yet: pid {c.pid} has VmPTE {kb} kB, not {kb + 4} kB."


def test_challenge_turns_student_slips_into_verdicts():
    ch = Challenge("?", use_count_is(2))
    m, p, c1, c2, a = three_sharers()
    other = toy().spawn()
    assert str(ch.check(3)) == "Not an answer: 3. Pass the ptsim machine or processes you built."
    assert str(ch.check(object())) == "Not an answer: a object. Pass the ptsim machine or processes you built."
    assert str(Exercise("?", lambda: None, lambda s: 1).check(m)) == "Not an answer: a Machine. Answer with a number (12 or 0xc), a word, or a list of them."
    assert str(ch.check(m, p)) == "Not an answer: check takes 1 object(s): machine."
    assert "different machines" in str(Challenge("?", shared_without_parent()).check(p, c1, other))
    assert str(Challenge("?", status_is("VmRSS", 0)).check(m)) == "Not yet: pass the process as a process, not Machine."
    c2.exit()
    assert str(Challenge("?", status_is("VmRSS", 0)).check(c2)) == f"Not yet: process {c2.pid} has exited."


@pytest.mark.parametrize(
    "factory, args",
    [(use_count_is, (0,)), (use_count_is, (True,)), (status_is, ("VmFoo", 1)), (status_is, ("VmPTE", -1)), (arch_is, ("toy2",)), (arch_is, (None,))],
)
def test_bad_goals_raise_value_error(factory, args):
    with pytest.raises(ValueError):
        factory(*args)


# -- the chapters' own checkers, with wrong answers -------------------------------------------


def chapter_cells(name, *ids):
    """Run these code cells of a chapter, in the chapter's order, in one namespace (as a kernel
    would, without the %magic lines); return the namespace."""
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    missing = set(ids) - {c.get("id") for c in cells}
    assert not missing, f"{name} has no cells {missing}"
    ns = {}
    for c in cells:
        if c.get("id") in ids:
            exec("\n".join(line for line in "".join(c["source"]).splitlines() if not line.startswith("%")), ns)
    return ns


def test_challenge_1_4_wants_an_x86_64_process_with_vmpte_20_kb():
    ns = chapter_cells("01-page-tables.ipynb", "eb795842", "f453c311", "a00b89eb")
    ch4 = ns["ch4"]
    for arch in ("x86_64", "i386"):
        m = ptsim.Machine(arch=arch, policy="copy", ram=16 << 20)
        p = m.spawn()
        span, t = m.arch.pte_span, 1
        while p.status()["VmPTE"] < 20:  # one more pte table (and on x86_64 its upper tables first)
            p.mmap(addr=t * span, length=m.arch.page_size, prot="rw")
            p.write(t * span, b"x")
            t += 1
        assert p.status()["VmPTE"] == 20, (arch, p.status())
        result = ch4.check(p)
        if arch == "x86_64":
            assert result, str(result)
        else:
            assert str(result).startswith("Not yet: this machine is i386, and the task asks for x86_64"), str(result)


def test_exercise_4_3_wants_a_toy_machine_with_use_count_4():
    ns = chapter_cells("04-sharing-tables.ipynb", "c02", "c44", "c50")
    ex43 = ns["ex43"]

    def forked_three_times(arch):
        m = ptsim.Machine(arch=arch, policy="shared", ram=8 << 20)
        p = m.spawn()
        a = p.mmap(length=4 * m.arch.page_size)
        p.write(a, b"x")
        for _ in range(3):
            p.fork()
        return m, p, a

    m, p, a = forked_three_times("x86_64")
    assert use_count(p, a) == 4
    assert "this machine is x86_64, and the task asks for toy" in str(ex43.check(m))
    m, p, a = forked_three_times("toy")
    assert use_count(p, a) == 4 and ex43.check(m)
    p.fork()
    assert "no page-table page has use count 4; the highest is 5" in str(ex43.check(m))


def test_exercise_5_2_wants_two_children_sharing_without_their_parent():
    ns = chapter_cells("05-handle-mm-fault.ipynb", "c02", "c06", "c45", "c48")
    ex52, forked, A = ns["ex52"], ns["forked"], ns["A"]
    m, parent, (a, b) = forked(children=2)
    assert "reaches every table" in str(ex52.check(parent, a, b))  # nobody has unshared yet
    parent.write(A, b"P")
    assert "three different processes" in str(ex52.check(parent, a, a))
    assert "is not a child of" in str(ex52.check(a, parent, b))
    assert "is not a child of" in str(ex52.check(m.spawn(), a, b))
    assert ex52.check(parent, a, b)


def test_exercise_6_1_diagnoses_a_forgotten_pgd():
    ns = chapter_cells("06-zap-page-range.ipynb", "c02", "c04", "c36")
    ex61 = ns["ex61"]
    copy, shared = ex61._solve()[1]  # the checker's answer, withheld from students until they have it
    # independent of the exercise: the tables the first child alone reaches, every level
    for policy, answer in (("copy", copy), ("shared", shared)):
        mach, parent, first, second = ns["three_full_tables"](policy)
        assert answer == len([t for t in list_tables(first) if t.pids == (first.pid,)])
    assert ex61.check([copy, shared])
    assert "the top-level table, goes too" in str(ex61.check([copy - 1, shared - 1]))
    assert "the top-level table, goes too" in str(ex61.check([copy, shared - 1]))
    assert "still mapped by the other two processes" in str(ex61.check([copy + 9, shared]))
    assert str(ex61.check([copy, copy])) == f"Not [{copy}, {copy}]: item 2 is not right. Hint: {ex61.hint}"


# -- observe ---------------------------------------------------------------------------------


def test_fault_kinds_cover_every_fault_counter():
    assert set(FAULT_KINDS) == {"none", "unshare"} | {c.removeprefix("fault_") for c in COUNTERS if c.startswith("fault_")}


@pytest.mark.parametrize("policy", ["copy", "shared"])
def test_observe_reports_the_fault_the_tables_show(policy):
    m = toy(policy)
    p = m.spawn()
    a = p.mmap(addr=2 * SPAN, length=SPAN)
    zero_page = ZERO_PFN * PAGE
    assert observe(m, lambda: p.read(a, 1)).kind == "zero" and p.translate(a) == zero_page
    assert observe(m, lambda: p.read(a, 1)).kind == "none"
    assert observe(m, lambda: p.write(a, b"x")).kind == "wp_copy" and p.translate(a) != zero_page
    assert observe(m, lambda: p.write(a + PAGE, b"x")).kind == "anon"
    c = p.fork()
    frame, table = c.translate(a), leaf_table(c, a)
    seen = observe(m, lambda: c.write(a, b"c"))
    assert seen.kind == ("unshare+wp_copy" if policy == "shared" else "wp_copy")
    assert c.translate(a) != frame and (leaf_table(c, a) != table) == (policy == "shared")
    frame = p.translate(a)
    minflt = p.minflt
    assert observe(m, lambda: p.write(a, b"p")).kind == "wp_reuse" and p.translate(a) == frame
    assert p.minflt == minflt + 1
    assert ("handle_mm_fault unshare_table" in seen.steps()) == (policy == "shared")
    assert observe(m, lambda: None).steps() == "nothing"


# -- per-student problems ---------------------------------------------------------------------


def test_student_id_is_the_name_then_the_environment_then_nbgrader_then_the_hub(monkeypatch, tmp_path):
    from ptsim.exercises import READER, student_id

    for var in ("PTSIM_STUDENT", "JUPYTERHUB_USER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    assert student_id() == READER
    monkeypatch.setenv("JUPYTERHUB_USER", "hubuser")
    assert student_id() == "hubuser"
    graded = tmp_path / "course" / "autograded" / "s1234" / "lab1"
    graded.mkdir(parents=True)
    monkeypatch.chdir(graded)
    assert student_id() == "s1234"  # nbgrader's student beats the hub's user (the grader's)
    monkeypatch.setenv("PTSIM_STUDENT", " ada ")
    assert student_id() == "ada"
    assert student_id("grace") == "grace"
    for bad in ("", "  ", 7):
        with pytest.raises(ValueError, match="name must be a non-empty string"):
            student_id(bad)


def test_student_rng_is_the_same_everywhere_and_differs_by_student_and_problem():
    from ptsim.exercises import student_rng

    draws = {(s, k): student_rng(k, s).getrandbits(64) for s in ("ada", "grace") for k in ("4.1", "4.2")}
    assert len(set(draws.values())) == 4
    assert student_rng("4.1", "ada").getrandbits(64) == draws["ada", "4.1"]
    # SHA-256, not Python's salted hash(): the value is fixed across runs and machines
    script = "from ptsim.exercises import student_rng; print(student_rng('4.1', 'ada').getrandbits(64))"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert int(other.stdout) == draws["ada", "4.1"]
    with pytest.raises(ValueError, match="key must be a non-empty string"):
        student_rng("")


# -- graded exercises: answers withheld, numbers per student ----------------------------------


def sized(rng):
    """A toy process that wrote 1 to 8 pages, drawn from `rng`."""
    m = toy()
    p = m.spawn()
    a = p.mmap(addr=2 * SPAN, length=SPAN)
    pages = rng.randint(1, 8)
    for i in range(pages):
        p.write(a + i * PAGE, b"x")
    return m, p, pages


def faults(state):
    m, p, pages = state
    return p.minflt


def test_a_graded_exercise_withholds_its_answer_until_check_accepts_one():
    from ptsim.exercises import HiddenAnswer

    ex = Exercise("How many page-table pages?", child_writes_page_3, table_pages, key="t.1", explain=lambda s, a: "(why)")
    right = tables_held(child_writes_page_3(), [1, 2])  # the machine's own count, two processes
    with pytest.raises(HiddenAnswer, match="exercise t.1: the answer is yours to find"):
        ex.answer
    assert str(ex.explain()) == "Exercise t.1: explain() gives the answer and why once check() has accepted yours (no answer checked yet)."
    assert not ex.check(right + 1) and not ex.solved
    assert "1 answer checked, none right yet" in str(ex.explain()) and str(right) not in str(ex.explain())
    with pytest.raises(HiddenAnswer):
        ex.answer
    assert ex.check(right) and ex.solved and ex.tries == 2 and ex.last.ok
    assert ex.answer == right and str(ex.explain()) == f"Answer: {right}. (why)"
    assert not ex.check(right + 1) and ex.solved  # solved stays solved; last says what the last check said
    assert not ex.last


def test_an_exercise_without_a_key_shows_its_answer_at_once():
    ex = Exercise("?", child_writes_page_3, table_pages)
    assert ex.answer == len(list_tables(ex.state)) and ex.explain().startswith(f"Answer: {ex.answer}.")


def test_the_checker_builds_its_own_scenario_so_the_students_experiments_do_not_move_the_answer():
    ex = Exercise("?", child_writes_page_3, table_pages, key="t.2")
    m = ex.state
    right = len(list_tables(m))
    m.spawn().fork()  # the student plays with the machine the exercise gave them
    assert len(list_tables(m)) > right
    assert ex.check(right) and ex.answer == right


def test_each_student_gets_their_own_numbers_and_the_checker_their_answer():
    made = {s: Exercise(lambda st: f"{st[2]} pages: faults taken?", sized, faults, key="t.3", student=s) for s in ("ada", "bob", "cy", "dee")}
    assert len({ex.prompt for ex in made.values()}) > 1
    for student, ex in made.items():
        m, p, pages = ex.state
        assert ex.student == student and ex.prompt == f"{pages} pages: faults taken?"
        again = Exercise("?", sized, faults, key="t.3", student=student)
        assert again.state[2] == pages  # the same numbers every time they are made
        assert again.check(sum(p.translate(2 * SPAN + i * PAGE) is not None for i in range(8)))  # the pages it maps
    other = Exercise("?", sized, faults, key="t.4", student="ada")  # another exercise: other numbers
    assert [Exercise("?", sized, faults, key=f"t.{i}", student="ada").state[2] for i in range(12)] != [other.state[2]] * 12


def test_in_nbgrader_the_exercise_is_made_for_the_student_whose_submission_runs(monkeypatch, tmp_path):
    for var in ("PTSIM_STUDENT", "JUPYTERHUB_USER"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "course" / "autograded" / "bob" / "ch07"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    ex = Exercise(lambda st: f"{st[2]} pages?", sized, faults, key="t.3")
    assert ex.student == "bob" and ex.prompt == Exercise(lambda st: f"{st[2]} pages?", sized, faults, key="t.3", student="bob").prompt


def test_a_challenge_remembers_whether_it_was_met():
    ch = Challenge("?", use_count_is(3))
    m, p, c1, c2, a = three_sharers()
    assert not ch.solved and ch.last is None
    c2.exit()
    assert not ch.check(m) and not ch.solved and ch.tries == 1
    p.fork()
    assert ch.check(m) and ch.solved and ch.last.ok


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_exercise_of_the_chapters_is_graded_so_its_answer_is_withheld(path):
    """Every Exercise(...) a chapter makes names itself with a key (and so hides its answer)."""
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        for name in re.findall(r"^(\w+) = Exercise\(", source, re.M):
            assert re.search(rf'key="\d+\.\d+"', source), f"{path.name}: {name} has no key"


# The chapters' per-student exercises: (chapter, the cells that make the exercise and solve it, its name).
PER_STUDENT = [
    ("01-page-tables.ipynb", ("eb795842", "f453c311", "52e1ecdd"), "ex1"),
    ("02-classic-fork.ipynb", ("37a0e274", "3a2fba52", "34fe88d0", "0ce9c437"), "ex3"),
    ("03-cost-measured.ipynb", ("e8652743", "a30debbf", "fc8aecfa"), "ex1"),
    ("04-sharing-tables.ipynb", ("c02", "c44", "c47", "c48"), "ex42"),
    ("05-handle-mm-fault.ipynb", ("c02", "c06", "c45", "c51", "c52"), "ex53"),
    ("07-hard-cases.ipynb", ("19639aa2", "ce2f17ad", "f57a3ea2"), "ex71"),
    ("08-workloads.ipynb", ("893a6cac", "b248c96c", "99cc9cd6"), "ex81"),
    ("09-what-came-after.ipynb", ("5c017694", "bd29ab53", "e01f1713"), "ex91"),
]


@pytest.mark.parametrize("name, cells, exercise", PER_STUDENT, ids=[f"{n[:2]}-{e}" for n, _, e in PER_STUDENT])
def test_a_per_student_exercise_differs_by_student_and_the_instructors_solution_fits_each(monkeypatch, name, cells, exercise):
    prompts = set()
    for student in ("ada", "bob", "cy", "dee", "reader"):
        monkeypatch.setenv("PTSIM_STUDENT", student)
        ex = chapter_cells(name, *cells)[exercise]
        assert ex.student == student and ex.solved, (student, str(ex.last))  # the solution cell checked it, right
        prompts.add(ex.prompt)
    assert len(prompts) > 1
