"""Student and instructor editions: solutions out, everything else untouched, bad markers refused."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from ptsim.editions import SolutionMarkerError, main, student_edition, write_student_edition

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
        new_markdown_cell("# Sharing\nSolutions sit between ### BEGIN SOLUTION and ### END SOLUTION lines."),
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
