"""Student and instructor editions: solutions out, everything else untouched, bad markers refused."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ptsim.editions import (
    FOLDED,
    SolutionMarkerError,
    fold_solutions,
    main,
    nbgrader_edition,
    student_edition,
    write_nbgrader_course,
    write_student_edition,
)

ROOT = Path(__file__).resolve().parent.parent

EXERCISE = """import ptsim
from ptsim.exercises import Challenge, shared_without_parent
ch = Challenge("Make a table two siblings share and their parent does not.", shared_without_parent())"""

SOLUTION_LINES = [
    'm = ptsim.Machine(arch="toy", policy="shared", ram=1 << 14)',
    "p = m.spawn(); a = p.mmap(addr=0x400, length=0x200); p.write(a, b'x')",
    "c1 = p.fork(); c2 = p.fork()",
    "p.write(a, b'p')  # the parent unshares",
]
SOLUTION = "\n".join(["### BEGIN SOLUTION", *SOLUTION_LINES, "### END SOLUTION", "verdict = ch.check(p, c1, c2)", "verdict"])
INDENTED = "def answer():\n    ### BEGIN SOLUTION\n    return 'secret-indented'\n    ### END SOLUTION\n\nanswer"
PROSE_ANSWER = "The parent's write unshares its table (secret-prose)."


def chapter(solution=SOLUTION):
    """A small chapter: prose, an exercise, a solution cell with outputs, a tagged answer."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_markdown_cell("# Sharing\nEach solution sits between two marker lines."),
        new_code_cell(EXERCISE, execution_count=1),
        new_code_cell(solution, execution_count=2, outputs=[new_output("execute_result", {"text/plain": "Right: ..."}, execution_count=2)]),
        new_markdown_cell(PROSE_ANSWER, metadata={"tags": ["solution"]}),
        new_code_cell(INDENTED, execution_count=3, outputs=[new_output("stream", name="stdout", text="secret-output\n")]),
        new_code_cell("print('after')", execution_count=4, outputs=[new_output("stream", name="stdout", text="after\n")]),
    ]
    return nb


def save(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def run(nb):
    """Run a notebook's code cells in order in one namespace, as a kernel would."""
    ns = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(cell.source, ns)
    return ns


SOLUTION_CELLS = {2, 3, 4}  # 0-based: the solution block, the tagged answer, the indented block


def test_student_edition_has_no_solution_text(tmp_path):
    src = save(chapter(), tmp_path / "book" / "ch.ipynb")
    [(out, stripped)] = write_student_edition([src], tmp_path / "student")
    text = out.read_text()
    assert stripped == 3
    for secret in SOLUTION_LINES[1:] + ["secret-indented", "secret-output", "secret-prose", "Right: ..."]:
        assert secret.replace("'", "\\'") not in text and secret not in text, secret
    cells = nbformat.read(out, as_version=4).cells
    assert cells[2].source == "# YOUR CODE HERE\nraise NotImplementedError()\nverdict = ch.check(p, c1, c2)\nverdict"
    assert cells[3].source == "YOUR ANSWER HERE"
    assert cells[4].source == "def answer():\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\nanswer"
    assert all(cells[i].outputs == [] and cells[i].execution_count is None for i in (2, 4))


def test_student_edition_leaves_every_other_cell_byte_identical(tmp_path):
    src = save(chapter(), tmp_path / "book" / "ch.ipynb")
    [(out, _)] = write_student_edition([src], tmp_path / "student")
    before, after = json.loads(src.read_text()), json.loads(out.read_text())
    assert {k: v for k, v in before.items() if k != "cells"} == {k: v for k, v in after.items() if k != "cells"}
    for i, (a, b) in enumerate(zip(before["cells"], after["cells"])):
        if i not in SOLUTION_CELLS:
            assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True), i
        assert a["metadata"] == b["metadata"] and a.get("id") == b.get("id")
    plain = chapter()
    plain.cells = [c for i, c in enumerate(plain.cells) if i not in SOLUTION_CELLS]
    src = save(plain, tmp_path / "plain" / "ch.ipynb")
    [(out, stripped)] = write_student_edition([src], tmp_path / "plain-student")
    assert stripped == 0 and out.read_bytes() == src.read_bytes()


def test_instructor_solution_passes_its_check_and_the_student_stub_does_not_run(tmp_path):
    nb = chapter()
    nb.cells = nb.cells[:3]
    assert run(nb)["verdict"].ok
    with pytest.raises(NotImplementedError):
        run(student_edition(nb))


@pytest.mark.parametrize(
    "source, line, says",
    [
        ("x = 1\n### BEGIN SOLUTION\ny = 2", 2, "has no '### END SOLUTION'"),
        ("y = 2\n### END SOLUTION", 2, "with no '### BEGIN SOLUTION'"),
        ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", 2, "inside the block opened at line 1"),
        ("### BEGIN SOLUTION\ny = 2  ### END SOLUTION", 2, "must stand alone"),
    ],
)
def test_unbalanced_markers_are_refused_naming_file_cell_and_line(tmp_path, capsys, source, line, says):
    nb = chapter(solution=source)
    src = save(nb, tmp_path / "book" / "bad.ipynb")
    with pytest.raises(SolutionMarkerError, match=f"cell 3 \\(id {nb.cells[2].id}\\), line {line}: .*{says}"):
        student_edition(nb, "bad.ipynb")
    out = tmp_path / "student"
    assert main([str(src), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and "cell 3" in err and f"line {line}" in err
    assert not out.exists()


def test_nothing_is_written_when_one_notebook_of_several_is_bad(tmp_path):
    good = save(chapter(), tmp_path / "book" / "a.ipynb")
    bad = save(chapter(solution="### BEGIN SOLUTION\nx = 1"), tmp_path / "book" / "b.ipynb")
    assert main([str(good), str(bad), "-o", str(tmp_path / "student")]) == 1
    assert not (tmp_path / "student").exists()


def test_the_instructor_edition_is_never_overwritten(tmp_path, capsys):
    src = save(chapter(), tmp_path / "book" / "ch.ipynb")
    before = src.read_bytes()
    assert main([str(tmp_path / "book"), "-o", str(tmp_path / "book")]) == 1
    assert "holds the instructor edition" in capsys.readouterr().err
    assert src.read_bytes() == before


def test_check_reports_solution_cells_and_runs_as_a_module(tmp_path):
    save(chapter(), tmp_path / "book" / "ch.ipynb")
    done = subprocess.run([sys.executable, "-m", "ptsim.editions", str(tmp_path / "book"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ch.ipynb: 3 solution cell(s), markers balanced")
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "ptsim.editions", str(empty), "--check"], capture_output=True, text=True)
    assert done.returncode == 1 and "no .ipynb file" in done.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_chapter_has_balanced_markers(path):
    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    student = student_edition(nb, path.name)
    assert not any("SOLUTION" in line and line.strip().startswith("###") for c in student.cells if c.cell_type == "code" for line in c.source.split("\n"))


def test_prose_that_names_a_marker_is_refused_since_nbgrader_would_read_it_as_one(tmp_path):
    nb = chapter()
    nb.cells[0].source = "Solutions sit between ### BEGIN SOLUTION and its END line."
    with pytest.raises(SolutionMarkerError, match="cell 1 .*markdown names a solution marker"):
        student_edition(nb, "ch.ipynb")
    with pytest.raises(SolutionMarkerError):
        nbgrader_edition(nb, "ch.ipynb")


def test_fold_folds_the_solution_cells_only_and_the_student_edition_opens_them():
    nb = chapter()
    assert fold_solutions(nb) == 3 and fold_solutions(nb) == 0  # once is enough
    folded = [i for i, c in enumerate(nb.cells) if c.metadata.get("jupyter") == FOLDED]
    assert set(folded) == SOLUTION_CELLS
    student = student_edition(nb)
    assert not any("jupyter" in c.metadata for c in student.cells)


def nbgrader_meta(cell):
    return cell.metadata["nbgrader"]


def test_nbgrader_edition_marks_answers_tests_and_locked_cells():
    nb = chapter()
    fold_solutions(nb)
    graded, auto, manual = nbgrader_edition(nb, "ch.ipynb")
    assert auto == ["ch"] and len(manual) == 2  # the tagged prose and the indented block: nothing checks them
    metas = [nbgrader_meta(c) for c in graded.cells]
    assert all(m["schema_version"] == 3 for m in metas)
    ids = [m["grade_id"] for m in metas]
    assert len(set(ids)) == len(ids) == len(nb.cells) + 1  # one test cell added
    answer, test = graded.cells[2], graded.cells[3]
    assert nbgrader_meta(answer) == {"grade": False, "grade_id": "ch-answer", "locked": False, "schema_version": 3, "solution": True, "task": False}
    assert nbgrader_meta(test) | {"grade_id": None} == {"grade": True, "grade_id": None, "locked": True, "points": 1, "schema_version": 3, "solution": False, "task": False}
    assert "jupyter" not in answer.metadata  # unfolded for the student
    for cell in (graded.cells[4], graded.cells[5]):  # graded by hand
        assert nbgrader_meta(cell)["solution"] and nbgrader_meta(cell)["grade"] and nbgrader_meta(cell)["points"] == 1
    for i in (0, 1, 6):
        assert nbgrader_meta(graded.cells[i])["locked"] and not nbgrader_meta(graded.cells[i])["solution"]
    # the test passes when the exercise's check accepted an answer, and fails, saying why, when not
    ns = run(new_notebook(cells=graded.cells[:3]))
    exec(test.source, ns)  # the instructor's solution passes its test
    ns["ch"].solved, ns["ch"].last = False, "Not yet: no table."
    with pytest.raises(AssertionError, match="ch: Not yet: no table."):
        exec(test.source, ns)


def test_the_course_has_one_assignment_per_chapter_and_the_pages_they_link(tmp_path):
    book = tmp_path / "book"
    nb = chapter()
    nb.cells[0].source += " See the [glossary](glossary.md#fault_anon)."
    save(nb, book / "04-sharing.ipynb")
    save(chapter(), book / "intro.ipynb")
    (book / "glossary.md").write_text("# Glossary\n")
    written = write_nbgrader_course([book], tmp_path / "course")
    assert [(p.relative_to(tmp_path / "course").as_posix(), auto) for p, auto, _ in written] == [
        ("source/ch04/04-sharing.ipynb", ["ch"]), ("source/intro/intro.ipynb", ["ch"])]
    assert (tmp_path / "course" / "source" / "ch04" / "glossary.md").read_text() == "# Glossary\n"
    assert not (tmp_path / "course" / "source" / "intro" / "glossary.md").exists()
    config = (tmp_path / "course" / "nbgrader_config.py").read_text()
    assert 'c.CourseDirectory.course_id = "ptsim"' in config and "#   ch04\n#   intro\n" in config
    assert 'os.environ.pop("PTSIM_STUDENT", None)' in config
    compile(config, "nbgrader_config.py", "exec")


def test_nbgrader_needs_an_output_directory(capsys):
    with pytest.raises(SystemExit):
        main(["notebooks", "--nbgrader", "--check"])
    assert "--nbgrader writes a course" in capsys.readouterr().err


def test_samples_need_the_course_and_an_assignment_it_has(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(ROOT / "notebooks"), "-o", str(tmp_path / "student"), "--samples", "ch07"])
    assert "--samples goes with --nbgrader" in capsys.readouterr().err
    chapter = str(ROOT / "notebooks" / "07-hard-cases.ipynb")
    assert main([chapter, "--nbgrader", "-o", str(tmp_path / "course"), "--samples", "ch99"]) == 1
    assert "samples: " in capsys.readouterr().err and not (tmp_path / "course" / "submitted").exists()
