"""The book's editions: the chapters as written (instructor), with solutions taken out
(student), and as an nbgrader course (a class, graded).

nbgrader's convention: in a code cell, the lines between `### BEGIN SOLUTION` and
`### END SOLUTION` are a solution; the student edition has `# YOUR CODE HERE` and
`raise NotImplementedError()` in their place, at the same indentation, and the cell's outputs
cleared. A cell tagged `solution` is a solution whole: a code cell becomes the two stub lines, a
markdown cell `YOUR ANSWER HERE`. Every other cell is left exactly as it is.

In the chapters (the reading edition) every solution cell is folded: JupyterLab shows a bar in
its place, and one click opens it. `--fold` folds them in place.

The nbgrader course has one assignment per chapter (`04-sharing-tables.ipynb` is `ch04`), in
`source/<assignment>/`, with nbgrader's cell metadata (schema 3): a cell holding a solution is an
answer cell; when that cell checks an exercise (`ex41.check(answer)` after the solution), a
locked autograder test cell worth one point follows it and asserts that the check accepted the
answer (`ex41.solved`), so an answer cell that raises, or never checks, scores 0 and the rest
are still graded; its hidden part (not in the students' copy) asserts that an exercise with
per-student numbers was made for the student whose submission runs, not remade for another. A solution nothing checks (a question answered in words, an experiment) is
graded by hand, one point. Every other cell is locked, so autograding restores it as written.

    python -m ptsim.editions notebooks -o build/student        # write the student edition
    python -m ptsim.editions notebooks --nbgrader -o course    # write an nbgrader course
    python -m ptsim.editions notebooks --nbgrader -o course --samples ch07   # and 3 sample submissions
    python -m ptsim.editions notebooks --check                  # only check the markers
    python -m ptsim.editions notebooks --fold                   # fold the solutions in place

A marker must stand alone on its line, and blocks must balance; anything else is refused (exit
status 1, naming the file, cell and line) before any file is written, since a stray marker
would leak a solution or swallow the cells' code. So must prose not name a marker: nbgrader
takes any line holding one for a marker.
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"
SOLUTION_TAG = "solution"
# JupyterLab's metadata for a cell shown folded, its input and its outputs.
FOLDED = {"source_hidden": True, "outputs_hidden": True}
COURSE_ID = "ptsim"
NBGRADER_SCHEMA = 3
# A check of an exercise or challenge after the solution: `ex41.check(answer)`, `verdict = ch.check(m)`.
_CHECK = re.compile(r"^(?:\w+ = )?(\w+)\.check\(", re.M)
# A link from a chapter to a page beside it: [glossary](glossary.md#fault_anon).
_PAGE_LINK = re.compile(r"\]\(([\w.-]+\.md)(?:#[^)]*)?\)")


class SolutionMarkerError(ValueError):
    """BEGIN/END SOLUTION markers that do not balance, or that share their line."""


def strip_solutions(source: str, where: str, stub: tuple[str, ...] = CODE_STUB) -> str | None:
    """`source` with each solution block replaced by `stub` (its lines, at the block's
    indentation), or None if it has no block."""
    out, opened, blocks = [], None, 0
    for number, line in enumerate(source.split("\n"), 1):
        marker = BEGIN if "BEGIN SOLUTION" in line else END if "END SOLUTION" in line else None
        if marker is None:
            if opened is None:
                out.append(line)
            continue
        if line.strip() != marker:
            raise SolutionMarkerError(f"{where}, line {number}: {marker!r} must stand alone on its line, not {line.strip()!r}")
        if marker == BEGIN:
            if opened is not None:
                raise SolutionMarkerError(f"{where}, line {number}: {BEGIN!r} inside the block opened at line {opened}")
            opened, blocks = number, blocks + 1
            indent = line[: len(line) - len(line.lstrip())]
            out += [indent + line for line in stub]
        elif opened is None:
            raise SolutionMarkerError(f"{where}, line {number}: {END!r} with no {BEGIN!r} before it")
        else:
            opened = None
    if opened is not None:
        raise SolutionMarkerError(f"{where}, line {opened}: {BEGIN!r} has no {END!r} after it")
    return "\n".join(out) if blocks else None


def _where(name: str, number: int, cell) -> str:
    return f"{name}: cell {number}" + (f" (id {cell['id']})" if "id" in cell else "")


def _tagged(cell) -> bool:
    return SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])


def _solution_kind(cell, where: str) -> str | None:
    """"region" (a code cell with solution blocks), "whole" (a cell tagged solution), or None.
    A marker in a markdown cell is refused: nbgrader would take the prose for a solution block."""
    if cell.cell_type == "markdown" and any(m in cell.source for m in ("BEGIN SOLUTION", "END SOLUTION")):
        raise SolutionMarkerError(f"{where}: markdown names a solution marker; nbgrader would read it as one (write about the markers without their words)")
    if _tagged(cell):
        return "whole"
    if cell.cell_type == "code" and strip_solutions(cell.source, where) is not None:
        return "region"
    return None


def _unfold(cell) -> None:
    """Open a folded cell (the student must see where to write)."""
    folds = cell.metadata.get("jupyter", {})
    for key in FOLDED:
        folds.pop(key, None)
    if "jupyter" in cell.metadata and not folds:
        del cell.metadata["jupyter"]


def student_edition(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of `nb` with every solution taken out (and its cell unfolded); `name` is for
    error messages."""
    nb = copy.deepcopy(nb)
    for number, cell in enumerate(nb.cells, 1):
        where = _where(name, number, cell)
        kind = _solution_kind(cell, where)
        if kind is None:
            continue
        _unfold(cell)
        if cell.cell_type == "code":
            cell.source = "\n".join(CODE_STUB) if kind == "whole" else strip_solutions(cell.source, where)
            cell.outputs, cell.execution_count = [], None
        else:
            cell.source = ANSWER_STUB
    return nb


def fold_solutions(nb: nbformat.NotebookNode, name: str = "notebook") -> int:
    """Fold every solution cell of `nb` in place (JupyterLab: one click opens it); return how
    many cells changed."""
    changed = 0
    for number, cell in enumerate(nb.cells, 1):
        if _solution_kind(cell, _where(name, number, cell)) is not None:
            folds = cell.metadata.setdefault("jupyter", {})
            changed += any(folds.get(key) is not value for key, value in FOLDED.items())
            folds.update(FOLDED)
    return changed


def assignment_name(path: Path) -> str:
    """The nbgrader assignment of a chapter: `ch04` for 04-sharing-tables.ipynb."""
    number = re.match(r"\d+", path.stem)
    return f"ch{number.group()}" if number else path.stem


def _nbgrader(cell, grade_id: str, *, solution=False, grade=False, points=None) -> None:
    meta = {"grade": grade, "grade_id": grade_id, "locked": not solution, "schema_version": NBGRADER_SCHEMA, "solution": solution, "task": False}
    if points is not None:
        meta["points"] = points
    cell.metadata["nbgrader"] = meta


def nbgrader_edition(nb: nbformat.NotebookNode, name: str = "notebook") -> tuple[nbformat.NotebookNode, list[str], list[str]]:
    """A copy of `nb` as an nbgrader source notebook; with the names of the exercises the
    autograder grades (one point each) and the grade ids of the answers graded by hand."""
    nb = copy.deepcopy(nb)
    cells, auto, manual = [], [], []
    for number, cell in enumerate(nb.cells, 1):
        cell_id = cell.get("id", str(number))
        kind = _solution_kind(cell, _where(name, number, cell))
        cells.append(cell)
        if kind is None:
            _nbgrader(cell, f"cell-{cell_id}")
            continue
        _unfold(cell)
        lines = cell.source.split("\n")
        ends = [i for i, line in enumerate(lines) if line.strip() == END]
        checked = _CHECK.findall("\n".join(lines[ends[-1] + 1:])) if kind == "region" else []
        if len(checked) != 1:  # nothing (or more than one thing) checks it: an answer read by hand
            manual.append(f"answer-{cell_id}")
            _nbgrader(cell, manual[-1], solution=True, grade=True, points=1)
            continue
        exercise = checked[0]
        auto.append(exercise)
        _nbgrader(cell, f"{exercise}-answer", solution=True)
        test = nbformat.v4.new_code_cell("\n".join([
            f"# Autograder test, 1 point: the cell above checked a right answer to {exercise}.",
            f"assert {exercise}.solved, f\"{exercise}: {{{exercise}.last or 'the check did not run'}}\"",
            # nbgrader keeps what lies between these markers out of the students' copy
            "### BEGIN HIDDEN TESTS",
            "from ptsim.exercises import submission_student",
            f"made_for = getattr({exercise}, 'student', None)  # None: the same numbers for every student",
            f"assert made_for in (None, submission_student() or made_for), f\"{exercise} was made for {{made_for}}, not this submission's student\"",
            "### END HIDDEN TESTS",
        ]), id=f"{cell_id}-test")
        _nbgrader(test, f"{exercise}-test", grade=True, points=1)
        cells.append(test)
    nb.cells = cells
    return nb, auto, manual


def _notebooks(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.ipynb"))
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise ValueError(f"notebooks: {path} is neither a directory nor an .ipynb file")
    if not found:
        raise ValueError(f"notebooks: no .ipynb file in {', '.join(map(str, paths))}")
    names = [p.name for p in found]
    if len(set(names)) < len(names):
        raise ValueError(f"notebooks: two notebooks share a name, and would share one file in the output: {sorted(names)}")
    return found


def student_editions(paths: list[Path]) -> list[tuple[Path, nbformat.NotebookNode, int]]:
    """Each notebook's student edition, with how many of its cells hold a solution; all are
    made (and so all checked) before the caller writes any."""
    editions = []
    for path in _notebooks(paths):
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        student = student_edition(nb, str(path))
        editions.append((path, student, sum(a != b for a, b in zip(nb.cells, student.cells))))
    return editions


def write_student_edition(paths: list[Path], out: Path) -> list[tuple[Path, int]]:
    """Write the student edition of every notebook into `out`; return each file written with
    how many cells were stripped."""
    editions = student_editions(paths)
    if any(out.resolve() == path.parent.resolve() for path, _, _ in editions):
        raise ValueError(f"out: {out} holds the instructor edition; the student edition goes elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    for path, student, _ in editions:
        nbformat.write(student, out / path.name)
    return [(out / path.name, changed) for path, _, changed in editions]


def nbgrader_config(assignments: list[str]) -> str:
    """The course's nbgrader_config.py."""
    listed = "\n".join(f"#   {a}" for a in assignments)
    return f'''# An nbgrader course of the ptsim book, written by `python -m ptsim.editions NOTEBOOKS --nbgrader -o DIR`.
# One assignment per chapter, in source/<assignment>/:
{listed}
# Release one:  nbgrader generate_assignment ch04   (then release_assignment, or copy release/ch04 out)
# Grade it:     put each student's copy in submitted/<student id>/ch04/, then  nbgrader autograde ch04
import os

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = "{COURSE_ID}"
# ptsim makes each student's problems from their id, which it reads from the path autograde runs
# a submission in (autograded/<student id>/<assignment>/). A PTSIM_STUDENT in the grader's
# environment would come first and grade every student as that one: the kernels must not see it.
os.environ.pop("PTSIM_STUDENT", None)
'''


def write_nbgrader_course(paths: list[Path], out: Path) -> list[tuple[Path, list[str], list[str]]]:
    """Write an nbgrader course of the notebooks into `out`: nbgrader_config.py and
    source/<assignment>/<notebook> (with the pages it links to beside it); return each
    notebook written with its autograded exercises and its hand-graded answers."""
    editions = []
    for path in _notebooks(paths):
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        editions.append((path, *nbgrader_edition(nb, str(path))))
    if any(out.resolve() == path.parent.resolve() for path, *_ in editions):
        raise ValueError(f"out: {out} holds the instructor edition; the course goes elsewhere")
    assignments = [assignment_name(path) for path, *_ in editions]
    if len(set(assignments)) < len(assignments):
        raise ValueError(f"notebooks: two chapters would be one assignment: {sorted(assignments)}")
    written = []
    for (path, nb, auto, manual), assignment in zip(editions, assignments):
        folder = out / "source" / assignment
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / path.name)
        for page in sorted({link for c in nb.cells if c.cell_type == "markdown" for link in _PAGE_LINK.findall(c.source)}):
            if (path.parent / page).is_file():
                shutil.copyfile(path.parent / page, folder / page)
        written.append((folder / path.name, auto, manual))
    (out / "nbgrader_config.py").write_text(nbgrader_config(assignments))
    return written


# The sample submissions `--samples` writes: a class's three kinds of answer, to rehearse grading.
SAMPLES = ("sample-right", "sample-wrong", "sample-raises")
# A check that reads the answer the solution sets: `ex41.check(answer)`.
_CHECKS_ANSWER = re.compile(r"^(?:\w+ = )?\w+\.check\(answer\)", re.M)
WRONG_ANSWER = ("answer = -1",)
SLIP = ('raise RuntimeError("a sample slip")',)


def write_samples(course: Path, assignment: str) -> list[Path]:
    """Three submissions of `assignment` in course/submitted/, made from its source notebooks,
    as an instructor would receive them. `sample-right`: the instructor's solutions (full
    marks, but for a per-student problem whose stored solution is the reader's answer, such as
    the find-the-bug exercise). `sample-wrong`: every autograded solution wrong (`answer = -1`
    where the check reads `answer`) or left undone (the student edition's stub): no point for
    them, the rest still graded. `sample-raises`: the first autograded solution raises; no
    point there, the rest graded. Returns the notebooks written."""
    source = course / "source" / assignment
    notebooks = sorted(source.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"samples: {source} holds no notebook; write the course first (--nbgrader -o {course})")
    written = []
    for student in SAMPLES:
        folder = course / "submitted" / student / assignment
        folder.mkdir(parents=True, exist_ok=True)
        for path in notebooks:
            nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
            graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith("-answer")]
            for number, cell in enumerate(graded):
                where = f"{path.name}: cell {cell.get('id')}"
                if student == "sample-wrong":
                    cell.source = strip_solutions(cell.source, where, WRONG_ANSWER if _CHECKS_ANSWER.search(cell.source) else CODE_STUB)
                elif student == "sample-raises" and number == 0:
                    cell.source = strip_solutions(cell.source, where, SLIP)
            nbformat.write(nb, folder / path.name)
            written.append(folder / path.name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptsim.editions", description="Write the student edition of the book's notebooks, or an nbgrader course of them.")
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks, or directories of them")
    parser.add_argument("--nbgrader", action="store_true", help="with -o: write an nbgrader course (one assignment per chapter)")
    parser.add_argument("--samples", metavar="ASSIGNMENT", help=f"with --nbgrader: also write three sample submissions of ASSIGNMENT ({', '.join(SAMPLES)}), to rehearse grading")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-o", "--out", type=Path, help="directory for the student edition (or the course)")
    what.add_argument("--check", action="store_true", help="only check the solution markers")
    what.add_argument("--fold", action="store_true", help="fold every solution cell in place (the reading edition)")
    args = parser.parse_args(argv)
    if args.nbgrader and args.out is None:
        parser.error("--nbgrader writes a course: give its directory with -o")
    if args.samples is not None and not args.nbgrader:
        parser.error("--samples goes with --nbgrader: the samples are submissions of the course's assignment")
    try:
        if args.check:
            for path, _, cells in student_editions(args.notebooks):
                print(f"{path}: {cells} solution cell(s), markers balanced")
        elif args.fold:
            folded = []
            for path in _notebooks(args.notebooks):  # every one checked before any is written
                nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
                folded.append((path, nb, fold_solutions(nb, str(path))))
            for path, nb, changed in folded:
                if changed:
                    nbformat.write(nb, path)
                print(f"{path}: {changed} solution cell(s) folded")
        elif args.nbgrader:
            for path, auto, manual in write_nbgrader_course(args.notebooks, args.out):
                print(f"wrote {path} ({len(auto)} autograded: {', '.join(auto) or 'none'}; {len(manual)} graded by hand)")
            print(f"wrote {args.out / 'nbgrader_config.py'}")
            if args.samples is not None:
                for path in write_samples(args.out, args.samples):
                    print(f"wrote {path}")
        else:
            for path, cells in write_student_edition(args.notebooks, args.out):
                print(f"wrote {path} ({cells} solution cell(s) stripped)")
    except (ValueError, OSError, nbformat.reader.NotJSONError) as e:
        print(f"editions: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
