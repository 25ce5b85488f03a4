"""The book's two editions: the chapters as written (instructor) and with solutions taken out (student).

nbgrader's convention: in a code cell, the lines between `### BEGIN SOLUTION` and
`### END SOLUTION` are a solution; the student edition has `# YOUR CODE HERE` and
`raise NotImplementedError()` in their place, at the same indentation, and the cell's outputs
cleared. A cell tagged `solution` is a solution whole: a code cell becomes the two stub lines, a
markdown cell `YOUR ANSWER HERE`. Every other cell is left exactly as it is.

    python -m ptsim.editions notebooks -o build/student    # write the student edition
    python -m ptsim.editions notebooks --check              # only check the markers

A marker must stand alone on its line, and blocks must balance; anything else is refused (exit
status 1, naming the file, cell and line) before any file is written, since a stray marker
would leak a solution or swallow the cells' code.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
ANSWER_STUB = "YOUR ANSWER HERE"
SOLUTION_TAG = "solution"


class SolutionMarkerError(ValueError):
    """BEGIN/END SOLUTION markers that do not balance, or that share their line."""


def strip_solutions(source: str, where: str) -> str | None:
    """`source` with each solution block replaced by the stub, or None if it has no block."""
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
            out += [indent + stub for stub in CODE_STUB]
        elif opened is None:
            raise SolutionMarkerError(f"{where}, line {number}: {END!r} with no {BEGIN!r} before it")
        else:
            opened = None
    if opened is not None:
        raise SolutionMarkerError(f"{where}, line {opened}: {BEGIN!r} has no {END!r} after it")
    return "\n".join(out) if blocks else None


def student_edition(nb: nbformat.NotebookNode, name: str = "notebook") -> nbformat.NotebookNode:
    """A copy of `nb` with every solution taken out; `name` is for error messages."""
    nb = copy.deepcopy(nb)
    for number, cell in enumerate(nb.cells, 1):
        where = f"{name}: cell {number}" + (f" (id {cell['id']})" if "id" in cell else "")
        tagged = SOLUTION_TAG in cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "code":
            source = "\n".join(CODE_STUB) if tagged else strip_solutions(cell.source, where)
            if source is not None:
                cell.source, cell.outputs, cell.execution_count = source, [], None
        elif tagged:
            cell.source = ANSWER_STUB
    return nb


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ptsim.editions", description="Write the student edition of the book's notebooks.")
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks, or directories of them")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("-o", "--out", type=Path, help="directory for the student edition")
    what.add_argument("--check", action="store_true", help="only check the solution markers")
    args = parser.parse_args(argv)
    try:
        if args.check:
            for path, _, cells in student_editions(args.notebooks):
                print(f"{path}: {cells} solution cell(s), markers balanced")
        else:
            for path, cells in write_student_edition(args.notebooks, args.out):
                print(f"wrote {path} ({cells} solution cell(s) stripped)")
    except (ValueError, OSError, nbformat.reader.NotJSONError) as e:
        print(f"editions: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
