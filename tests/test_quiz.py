"""The seeded quiz: every computed answer is held to an independent fact of the machine (a
translation, a fault count, who points at a table, who forked whom), never to itself; and the
knobs, the sheets and the start-up that an instructor relies on."""

import collections
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_exercises import leaf_table, tables_held

import ptsim
from ptsim.exercises import student_rng
from ptsim.hardware.arch import _PAGE_RW
from ptsim.kernel.page import ZERO_PFN
from ptsim.quiz import ANY_ARCH, OUTCOMES, TOPICS, main, quiz

ROOT = Path(__file__).resolve().parent.parent
SEEDS = range(12)
PAGE = ptsim.ARCHES["toy"].page_size


def live(ns):
    return [v for v in ns.values() if isinstance(v, ptsim.Process) and not v.exited]


def script(problem):
    """The scenario lines the question shows, run by the test itself."""
    text = str(problem)
    lines = []
    for line in text.splitlines():
        if not re.match(r"^(m = |[a-z]\w* = \w+\.|\w+\.\w+\()", line):
            break
        lines.append(line)
    ns = {"ptsim": ptsim}
    exec("\n".join(lines), ns)
    return ns, text


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_same_seed_gives_the_same_problems(topic):
    first, again = quiz(topic, 3, 3), quiz(topic, 3, 3)
    assert [str(p) for p in first] == [str(p) for p in again]
    assert [p.explain() for p in first] == [p.explain() for p in again]
    assert len({str(p) for s in SEEDS for p in quiz(topic, s, 1)}) > len(SEEDS) // 2


@pytest.mark.parametrize("arch", ["toy", "i386", "x86_64"])
@pytest.mark.parametrize("seed", SEEDS)
def test_translate_answer_is_what_the_kernel_and_the_fault_handler_see(seed, arch):
    for problem in quiz("translate", seed, 3, arch=arch, level=1 + seed % 3):
        ns, text = script(problem)
        assert f"Geometry {arch}:" in text
        op, va = re.search(r"Q: p (reads|writes) the byte at (0x[0-9a-f]+)", text).groups()
        p, va = ns["p"], int(va, 16)
        if op == "reads":
            assert problem.answer == (p.translate(va) if p.translate(va) is not None else "fault")
        else:
            before = p.minflt
            try:
                p.write(va, b"?")
            except ptsim.SegmentationFault:
                assert problem.answer == "fault"
                continue
            faulted = p.minflt == before + 1
            assert (problem.answer == "fault") == faulted
            if not faulted:
                assert problem.answer == p.translate(va)
        assert problem.check(problem.answer)


def test_translate_diagnoses_a_dropped_offset_and_4k_pages():
    problem = next(p for s in SEEDS for p in quiz("translate", s, 3) if p.answer != "fault" and p.answer % PAGE)
    pfn, offset = divmod(problem.answer, PAGE)
    assert "offset" in str(problem.check(pfn * PAGE))
    assert "not 4096" in str(problem.check((pfn << 12) | offset))
    assert "no fault" in str(problem.check("fault"))


@pytest.mark.parametrize("arch", ["toy", "x86_64"])
@pytest.mark.parametrize("seed", SEEDS)
def test_fork_copy_answer_is_what_the_child_maps_and_the_parent_lost(seed, arch):
    for problem in quiz("fork-copy", seed, 3, arch=arch, level=1 + seed % 3):
        ns, text = script(problem)
        m, p = ns["m"], ns["p"]
        page = m.arch.page_size
        pages = [a for v in p.mm.vmas for a in range(v.start, v.end, page)]
        rw_before = {a for a in pages if m.kernel.follow_pte(p.mm, a) & _PAGE_RW}
        c = p.fork()
        if "copy into c" in text:
            assert problem.answer == sum(1 for a in pages if c.translate(a) is not None)
        else:
            rw_after = {a for a in pages if m.kernel.follow_pte(p.mm, a) & _PAGE_RW}
            assert problem.answer == len(rw_before - rw_after)


@pytest.mark.parametrize("seed", SEEDS)
def test_shared_answer_is_the_pointer_count_or_the_tables_held(seed):
    for problem in quiz("shared", seed, 3, level=1 + seed % 3):
        ns, text = script(problem)
        m, processes = ns["m"], live(ns)
        asked = re.search(r"maps (0x[0-9a-f]+) for (\w+)\?", text)
        if asked:
            addr, who = int(asked[1], 16), ns[asked[2]]
            mine = leaf_table(who, addr)
            assert problem.answer == (0 if mine is None else [leaf_table(q, addr) for q in processes].count(mine))
        else:
            assert problem.answer == tables_held(m, processes)
        m.check()


@pytest.mark.parametrize("arch", ["toy", "i386"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cow_kinds_match_frames_tables_and_fault_counts(seed, arch):
    for problem in quiz("cow", seed, 2, arch=arch, level=1 + seed % 3):
        ns, text = script(problem)
        page = ns["m"].arch.page_size
        accesses = re.findall(r"^  \d\. (.*)$", text, re.M)
        assert len(accesses) == len(problem.answer)
        for access, kind in zip(accesses, problem.answer):
            who = ns[access.split(".")[0]]
            addr = int(re.search(r"\((0x[0-9a-f]+)", access)[1], 16)
            frame, table, minflt = who.translate(addr), leaf_table(who, addr), who.minflt
            exec(access, ns)
            assert (kind == "none") == (who.minflt == minflt)
            assert kind.startswith("unshare+") == (table is not None and leaf_table(who, addr) != table)
            base = kind.removeprefix("unshare+")
            after = who.translate(addr)
            if base == "zero":
                assert after == ZERO_PFN * page + addr % page
            elif base in ("anon", "shmem"):
                assert frame is None and after is not None and who.mm.find_vma(addr).shared == (base == "shmem")
            elif base == "wp_copy":
                assert frame is not None and after != frame
            elif base == "wp_reuse":
                assert after == frame
            else:
                assert base == "none" and after == frame


def test_the_seeds_tested_meet_every_cow_kind_and_both_outcomes_of_a_walk():
    kinds = {k.removeprefix("unshare+") for s in SEEDS for p in quiz("cow", s, 2, level=2) for k in p.answer}
    assert kinds == {"none", "zero", "anon", "shmem", "wp_copy", "wp_reuse"}
    assert any(k.startswith("unshare+") for s in SEEDS for p in quiz("cow", s, 2, level=2) for k in p.answer)
    walks = {("writes" in str(p), p.answer == "fault") for s in SEEDS for p in quiz("translate", s, 3)}
    assert walks == {(False, False), (False, True), (True, False), (True, True)}


def test_cow_diagnose_notices_a_forgotten_unshare_and_a_copy_for_a_reuse():
    problems = [p for s in SEEDS for p in quiz("cow", s, 2, level=3)]
    problem = next(p for p in problems if any(k.startswith("unshare+") for k in p.answer))
    i = next(i for i, k in enumerate(problem.answer) if k.startswith("unshare+"))
    given = list(problem.answer)
    given[i] = given[i].removeprefix("unshare+")
    assert f"access {i + 1} finds its table still shared" in str(problem.check(given))
    problem = next(p for p in problems if "wp_reuse" in p.answer)
    i = problem.answer.index("wp_reuse")
    given = list(problem.answer)
    given[i] = "wp_copy"
    assert f"access {i + 1} is wp_reuse, not wp_copy: do_wp_page" in str(problem.check(given))


# -- any student id, the same problems everywhere ------------------------------------------------


def test_a_student_id_is_a_seed_hashed_the_same_in_every_process():
    ada = [str(p) for p in quiz("cow", "ada", 2)]
    assert ada == [str(p) for p in quiz("cow", " ada ", 2)]  # an id is trimmed, as student_id does
    assert ada != [str(p) for p in quiz("cow", "grace", 2)]
    assert [str(p) for p in quiz("translate", 7, 2)] == [str(p) for p in quiz("translate", "7", 2)]  # -s 7 is "7"
    code = "from ptsim.quiz import quiz; print('\\n'.join(str(p) for p in quiz('cow', 'ada', 2)))"
    for hashseed in ("1", "2"):
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                               env={"PYTHONHASHSEED": hashseed, "PATH": "", "PYTHONPATH": str(ROOT)})
        assert other.stdout == "\n".join(ada) + "\n"


def test_the_seed_is_drawn_with_student_rng_not_a_second_scheme(monkeypatch):
    """One home for per-student numbers: quiz asks ptsim.exercises.student_rng, with the id."""
    import ptsim.quiz

    asked = []
    monkeypatch.setattr(ptsim.quiz, "student_rng", lambda key, student: asked.append((key, student)) or student_rng(key, student))
    quiz("shared", "s1234", 1)
    assert len(asked) == 1 and asked[0][1] == "s1234" and "shared" in asked[0][0]


# -- the knobs: geometry, difficulty, multiple choice --------------------------------------------


def test_level_makes_more_calls_processes_and_accesses():
    def mean(topic, level, measure):
        problems = [p for s in SEEDS for p in quiz(topic, s, 1, level=level)]
        return sum(measure(str(p), p) for p in problems) / len(problems)

    forks = lambda text, p: text.count(".fork()")  # noqa: E731
    accesses = lambda text, p: len(p.answer)  # noqa: E731
    calls = lambda text, p: p.answer.count(";") + 1  # noqa: E731
    regions = lambda text, p: text.count(".mmap(")  # noqa: E731
    assert mean("shared", 1, forks) < mean("shared", 3, forks)
    assert mean("cow", 1, accesses) == 3 and mean("cow", 3, accesses) >= 5
    assert [mean("calls", level, calls) for level in (1, 2, 3)] == [3, 4, 6]
    assert mean("translate", 1, regions) == 1 < mean("translate", 3, regions)
    assert all("policy=\"copy\"" in str(p) for p in quiz("cow", 1, 4, level=1))
    assert all("policy=\"shared\"" in str(p) for p in quiz("cow", 1, 4, level=3))


def test_translate_draws_each_answer_class_evenly():
    drawn = collections.Counter()
    faults = collections.Counter()
    for s in range(600):
        (problem,) = quiz("translate", s, 1, level=1 + s % 3)
        if problem.answer == "fault":
            drawn["fault"] += 1
            faults["protection" if problem._solve()[0].fault.protection else "not present"] += 1  # the checker's own scenario
        else:
            drawn["write" if "Q: p writes" in str(problem) else "read"] += 1
    assert set(drawn) == set(OUTCOMES)
    for outcome in OUTCOMES:
        assert abs(drawn[outcome] / 600 - 1 / len(OUTCOMES)) < 0.07, drawn
    assert min(faults.values()) > 40, faults  # both kinds of fault are asked


@pytest.mark.parametrize("topic", sorted(TOPICS))
def test_every_wrong_option_is_a_diagnosed_mistake(topic):
    arch = "i386" if topic in ANY_ARCH else "toy"
    for seed in range(6):
        for problem in quiz(topic, seed, 2, arch=arch, level=2, choices=4):
            assert 2 <= len(problem.choices) <= 4
            verdicts = [problem.check(letter) for letter in "abcd"[: len(problem.choices)]]
            assert sum(bool(v) for v in verdicts) == 1
            for choice, verdict in zip(problem.choices, verdicts):
                if not verdict:  # a reason, not a bare "Not X." nor the hint
                    assert re.match(r"Not .+: \S", str(verdict)) and "Hint:" not in str(verdict), verdict
            assert problem.check(problem.answer) and not problem.check("a-wrong-word")


@pytest.mark.parametrize("seed", range(4))
def test_multiple_choice_translate_is_still_the_machines_answer(seed):
    for problem in quiz("translate", seed, 3, choices=3):
        ns, text = script(problem)
        va = int(re.search(r"the byte at (0x[0-9a-f]+)", text)[1], 16)
        if "Q: p reads" in text:
            right = ns["p"].translate(va)
            assert problem.check("fault" if right is None else hex(right))


# -- the inverse question: which calls made this state ------------------------------------------


def fingerprint(ns, names, start, end):
    """Who forked whom, who exited, which processes share each pte table of [start, end), and
    the tables held: read by the test from Process.ppid, the upper entries (leaf_table) and the
    counters, not from the quiz's text."""
    procs = {n: ns[n] for n in names}
    by_pid = {p.pid: n for n, p in procs.items()}
    tree = tuple(sorted((n, by_pid.get(p.ppid), p.exited) for n, p in procs.items()))
    alive = [p for p in procs.values() if not p.exited]
    span = ns["m"].arch.pte_span
    sharing = []
    for base in range(start // span * span, end, span):
        groups = collections.defaultdict(list)
        for n, p in procs.items():
            if not p.exited and leaf_table(p, base) is not None:
                groups[leaf_table(p, base)].append(n)
        sharing.append(tuple(sorted(tuple(g) for g in groups.values())))
    return tree, tuple(sharing), tables_held(ns["m"], alive)


@pytest.mark.parametrize("seed", range(6))
def test_calls_options_lead_to_different_states_and_only_the_answer_to_the_one_shown(seed):
    for problem in quiz("calls", seed, 1, level=1 + seed % 3):
        text = str(problem)
        setup = text.split("\nThen some calls")[0].splitlines()
        start, length = (int(x, 16) for x in re.search(r"p\.mmap\(addr=(0x[0-9a-f]+), length=(0x[0-9a-f]+)\)", text).groups())
        shown = re.findall(r"^  pte table for (0x[0-9a-f]+)-\S+: use count (\d+) \(([^)]*)\)$", text, re.M)
        prints = []
        for option in problem.choices:
            ns = {"ptsim": ptsim}
            try:
                exec("\n".join(setup + option.split("; ")), ns)
            except Exception:
                pytest.fail(f"option {option!r} does not run")
            names = re.findall(r"^(\w+) = (?:m\.spawn|\w+\.fork)\(\)", "\n".join(setup + option.split("; ")), re.M)
            prints.append(fingerprint(ns, names, start, start + length))
            if option == problem.answer:
                for base, count, sharers in shown:  # the state shown is the answer's
                    table = leaf_table(ns[sharers.split(", ")[0]], int(base, 16))
                    assert [n for n in names if not ns[n].exited and leaf_table(ns[n], int(base, 16)) == table] == sharers.split(", ")
                    assert int(count) == len(sharers.split(", "))
        assert len(set(prints)) == len(prints)  # exactly one option leaves the state shown
        right = problem.answer.split("; ")
        for option in problem.choices:  # each wrong option is one slip away from the right calls
            calls = option.split("; ")
            dropped = len(calls) == len(right) - 1 and all(calls.count(c) <= right.count(c) for c in calls)
            swapped = sorted(calls) == sorted(right)
            other = len(calls) == len(right) and sum(a != b for a, b in zip(calls, right)) == 1
            assert dropped or swapped or other, (option, problem.answer)
        for letter, option in zip("abcd", problem.choices):
            if option != problem.answer:
                assert re.search(r"those calls (do not )?leave '.+', which the state shown (does not have|has)\.$", str(problem.check(letter)))


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, kwargs, name", [
    (("paging", 1, 1), {}, "topic"),
    (("cow", 1.5, 1), {}, "seed"),
    (("cow", "  ", 1), {}, "seed"),
    (("cow", True, 1), {}, "seed"),
    (("cow", 1, 0), {}, "n"),
    (("cow", 1, True), {}, "n"),
    (("cow", 1, 1), {"arch": "arm"}, "arch"),
    (("shared", 1, 1), {"arch": "i386"}, "arch"),
    (("calls", 1, 1), {"arch": "x86_64"}, "arch"),
    (("cow", 1, 1), {"level": 4}, "level"),
    (("cow", 1, 1), {"level": True}, "level"),
    (("cow", 1, 1), {"choices": 1}, "choices"),
    (("cow", 1, 1), {"choices": 11}, "choices"),
])
def test_quiz_rejects_bad_arguments(args, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must"):
        quiz(*args, **kwargs)


@pytest.mark.parametrize("argv, named", [
    (["-n", "0"], "-n/--num"),
    (["-t", "translate,paging"], "-t/--topic"),
    (["-s", " "], "-s/--seed"),
    (["--level", "4"], "--level"),
    (["--arch", "i386", "-t", "shared"], "--arch"),
    (["--choices", "1"], "--choices"),
    (["--sheet", "x"], "--students"),
    (["--students", "ada"], "--sheet"),
])
def test_cli_rejects_bad_arguments_naming_them(argv, named, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "argument" in err and named in err.splitlines()[-1]


def test_cli_echoes_arguments_first_and_answers_only_with_c(capsys):
    assert main(["--topic", "translate", "-s", "7", "-n", "2"]) == 0
    plain = capsys.readouterr().out
    assert plain.splitlines()[:9] == ["ARG topic translate", "ARG seed 7", "ARG num 2", "ARG compute False", "ARG arch toy", "ARG level 1",
                                      "ARG choices 0", "ARG sheet None", "ARG students None"]
    assert "Problem 2" in plain and "Answer:" not in plain
    main(["--topic", "translate", "-s", "7", "-n", "2", "-c"])
    answered = capsys.readouterr().out
    assert answered.count("Answer:") == 2
    main(["--topic", "translate", "-s", "7", "-n", "2", "-c"])
    assert capsys.readouterr().out == answered
    main(["-t", "cow,calls", "-s", "ada", "-n", "1", "-c", "--level", "2", "--choices", "3"])
    both = capsys.readouterr().out
    assert both.count("Answer:") == 2 and both.count("(b) ") >= 2 and "ARG seed ada" in both


def test_cli_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "ptsim.quiz", "-t", "cow", "-s", "1", "-n", "1", "-c"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("ARG topic cow\nARG seed 1\nARG num 1\nARG compute True\n") and "Answer: [" in out


# -- sheets and keys ------------------------------------------------------------------------------


def test_sheets_and_keys_one_per_student_deterministic(tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# class of 2027\nada\n\ns1234\n")
    argv = ["-t", "translate,calls", "-n", "2", "--level", "2", "--sheet", str(tmp_path / "out"), "--students", str(ids), "grace hopper", "x</title>"]
    assert main(argv) == 0
    out = tmp_path / "out"
    html = importlib.util.find_spec("nbconvert") is not None
    names = ["ada", "s1234", "grace_hopper", "x_title"]
    expected = {f"{n}-{kind}.{ext}" for n in names for kind in ("sheet", "key") for ext in (["md", "html"] if html else ["md"])}
    assert {p.name for p in out.iterdir()} == expected
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(argv) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # the same ids, the same files
    sheet, key = (out / "ada-sheet.md").read_text(), (out / "ada-key.md").read_text()
    problems = quiz("translate", "ada", 2, level=2) + quiz("calls", "ada", 2, level=2)
    for problem in problems:  # the sheet holds what -s ada makes, the key its answers
        assert str(problem) in sheet and str(problem) in key and problem.explain() in key
    assert "Answer: " not in sheet.replace("Answer: ____", "") and key.count("Answer: ") == len(problems)
    assert sheet.count("## Problem") == 4 and "-s ada" in sheet
    assert (out / "s1234-sheet.md").read_text() != sheet.replace("ada", "s1234")
    if html:
        page = (out / "ada-key.html").read_text()
        assert page.startswith("<!DOCTYPE html>") and "<pre" in page and "<h2" in page and "&lt;/title&gt;" in (out / "x_title-key.html").read_text()


def test_sheets_refuse_ids_that_make_one_file_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--sheet", str(tmp_path), "--students", "a b", "a_b"])
    assert "--students" in capsys.readouterr().err
    empty = tmp_path / "none.txt"
    empty.write_text("# nobody yet\n")
    with pytest.raises(SystemExit):
        main(["--sheet", str(tmp_path), "--students", str(empty)])
    assert "no student ids" in capsys.readouterr().err


# -- starts fast ----------------------------------------------------------------------------------


def test_importing_the_quiz_imports_no_drawing_stack():
    code = ("import sys, ptsim, ptsim.exercises, ptsim.quiz, ptsim.peek; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'networkx', 'ipywidgets', 'IPython'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out == "[]\n"
    drawn = subprocess.run([sys.executable, "-c", code.replace("ptsim.peek;", "ptsim.peek, ptsim.draw;")], capture_output=True, text=True,
                           check=True, cwd=ROOT).stdout
    assert "matplotlib" in drawn  # the test can fail: drawing does pull it in
