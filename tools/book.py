"""The book's manifest and the chapters' stored outputs.

`book.toml` lists the chapters in reading order; tests, the browser test and `make book` read it
here. The chapters are stored with their outputs, as a fresh kernel produces them top to bottom,
so that strict nbval can compare every output. `python -m tools.book run` makes them so, and
prints how long each chapter took against the 30 s budget (a printout, never a test: timings
depend on the machine).

    python -m tools.book run [CHAPTER ...] [--dry-run]   execute in place (default: every chapter)
    python -m tools.book first                           path of the first chapter, if any
"""

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ptsim.exercises import READER

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
# Every chapter must run top to bottom in a fresh kernel in this many seconds (issue 4).
BUDGET_SECONDS = 30
# A cell that runs longer is stuck, not slow.
CELL_TIMEOUT_SECONDS = 600


def manifest() -> dict:
    """book.toml, read."""
    with open(ROOT / "book.toml", "rb") as f:
        return tomllib.load(f)


def title():
    """The book's title, from book.toml."""
    found = manifest().get("title")
    if not isinstance(found, str) or not found:
        raise ValueError("book.toml: `title` must be the book's title")
    return found


def chapters():
    """The chapter file names listed in book.toml, in reading order."""
    listed = manifest().get("book", {}).get("chapters")
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        raise ValueError(f"book.toml: [book] chapters must be a list of file names, not {listed!r}")
    return listed


def execute(path, *, write):
    """Run the notebook at `path` top to bottom in a fresh kernel, from its own folder as nbval
    does; store the outputs in place if `write`. Returns (code cells, seconds)."""
    nb = nbformat.read(path, as_version=4)
    seconds = run(nb, Path(path).parent)
    if write:
        nbformat.write(nb, path)
    return sum(cell.cell_type == "code" for cell in nb.cells), seconds


def run(nb, folder, on_kernel=None):
    """Execute `nb` in place, in a fresh kernel started in `folder`, as the book's reader (the
    per-student exercises get the reader's numbers, whoever runs it). Returns the seconds
    taken. `on_kernel(pid)`, if given, is called with the kernel's process id before the first
    cell."""
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_SECONDS,
        resources={"metadata": {"path": str(folder)}},
        # Wall-clock stamps in every cell's metadata would change the file on every run.
        record_timing=False,
    )
    if on_kernel is not None:
        client.on_notebook_start = lambda notebook: on_kernel(client.km.provisioner.pid)
    start = time.perf_counter()
    client.execute(env={**os.environ, "PTSIM_STUDENT": READER})
    return time.perf_counter() - start


def resolve(name):
    """A chapter named as in book.toml, or a path to a notebook."""
    path = Path(name)
    if not path.exists() and (NOTEBOOKS / name).exists():
        path = NOTEBOOKS / name
    if path.suffix != ".ipynb" or not path.is_file():
        raise ValueError(f"chapter: {name!r} is not a notebook in notebooks/ or a path to one")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.book", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute chapters in place in a fresh kernel, timed")
    run.add_argument("chapter", nargs="*", help="file names from book.toml or notebook paths (default: all)")
    run.add_argument("--dry-run", action="store_true", help="execute and time, but store nothing")
    commands.add_parser("first", help="print the path of the first chapter (nothing if none)")
    args = parser.parse_args(argv)

    if args.command == "first":
        listed = chapters()
        if listed:
            print(NOTEBOOKS / listed[0])
        return 0

    try:
        paths = [resolve(name) for name in (args.chapter or chapters())]
    except ValueError as error:
        parser.error(str(error))
    print(f"{'chapter':<32} {'cells':>5} {'seconds':>8}  budget {BUDGET_SECONDS} s")
    over = 0
    for path in paths:
        cells, seconds = execute(path, write=not args.dry_run)
        verdict = "ok" if seconds <= BUDGET_SECONDS else "OVER"
        over += verdict == "OVER"
        print(f"{path.name:<32} {cells:>5} {seconds:>8.1f}  {verdict}", flush=True)
    if over:
        print(f"{over} chapter(s) over the {BUDGET_SECONDS} s budget on this machine", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
