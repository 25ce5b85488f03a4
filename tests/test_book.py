"""The book as a whole: book.toml and notebooks/ agree, and every chapter has the shape the
book promises (a numbered title, a summary and exercises at the end) and is stored exactly as a
fresh kernel leaves it. That last point is what makes strict nbval mean something: nbval never
compares a cell whose stored outputs were stripped, so a stripped chapter would pass it unseen.
Links from one page of the book to another (chapters, the rules of sharing, the glossary) lead to
files that are there."""

import re

import nbformat
import pytest

from tools.book import NOTEBOOKS, chapters

# Files in notebooks/ that are not chapters: the folder's README, nbval's sanitize file, and the
# pages the chapters link to: the rules of sharing and the glossary.
NOT_CHAPTERS = {"README.md", "nbval_sanitize.cfg", "rules-of-sharing.md", "glossary.md"}
CHAPTER_NAME = re.compile(r"(\d{2})-[a-z0-9]+(?:-[a-z0-9]+)*\.ipynb")
HEADING = re.compile(r"(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"\]\(([^)\s]+)\)")  # a markdown link's target: [text](target)


def test_book_lists_chapters():
    assert chapters(), "book.toml: [book] chapters is empty; the book has no chapters yet"


def test_every_listed_chapter_is_in_notebooks():
    missing = [name for name in chapters() if not (NOTEBOOKS / name).is_file()]
    assert not missing, f"book.toml lists chapters that are not in notebooks/: {missing}"


def test_every_file_in_notebooks_is_a_listed_chapter():
    listed = set(chapters())
    strays = sorted(
        path.name
        for path in NOTEBOOKS.iterdir()
        if not path.name.startswith(".") and path.name not in listed | NOT_CHAPTERS
    )
    assert not strays, (
        f"notebooks/ holds files that book.toml does not list: {strays} "
        f"(list them in book.toml, or add a non-chapter file to NOT_CHAPTERS in {__file__})"
    )


def test_chapter_names_are_numbered_in_reading_order():
    listed = chapters()
    expected = [f"{number:02d}" for number in range(1, len(listed) + 1)]
    found = [match.group(1) if (match := CHAPTER_NAME.fullmatch(name)) else name for name in listed]
    assert found == expected, (
        f"book.toml must list NN-name.ipynb (lower case, hyphens) numbered 01, 02, ... in order: {listed}"
    )


def load(name):
    """The chapter as stored, or a clear failure if it is missing."""
    path = NOTEBOOKS / name
    if not path.is_file():
        pytest.fail(f"book.toml lists {name}, which is not in notebooks/")
    return nbformat.read(path, as_version=4)


def headings(nb):
    """(level, text) of every markdown heading, in order; lines inside ``` fences are code."""
    found = []
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        fenced = False
        for line in cell.source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and (match := HEADING.fullmatch(line)):
                found.append((len(match.group(1)), match.group(2)))
    return found


def code_cells(nb):
    return [(index, cell) for index, cell in enumerate(nb.cells) if cell.cell_type == "code"]


def where(index, cell):
    """A cell as a reader finds it: its place among all cells (from 1) and its first line."""
    first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
    return f"cell {index + 1} ({first[:50]!r})"


def raises_exception(cell):
    return "raises-exception" in cell.metadata.get("tags", [])


each_chapter = pytest.mark.parametrize("name", chapters())


@each_chapter
def test_chapter_is_a_valid_notebook_with_the_python3_kernel(name):
    nb = load(name)
    nbformat.validate(nb)
    # JupyterLab asks the reader to pick a kernel when the notebook names none it knows.
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    assert kernel == "python3", f"{name}: metadata.kernelspec.name must be 'python3', not {kernel!r}"


@each_chapter
def test_chapter_opens_with_its_numbered_title(name):
    nb = load(name)
    number = int(name[:2])
    first = nb.cells[0] if nb.cells else None
    assert first is not None and first.cell_type == "markdown", f"{name}: the first cell must be markdown"
    title = first.source.lstrip().splitlines()[0] if first.source.strip() else ""
    assert re.fullmatch(rf"# {number}\. \S.*", title), (
        f"{name}: the first cell must open with the title '# {number}. ...', not {title!r}"
    )


@each_chapter
def test_chapter_ends_with_summary_then_exercises(name):
    sections = [text for level, text in headings(load(name)) if level <= 2]
    assert sections[-2:] == ["Summary", "Exercises"], (
        f"{name}: the last sections must be '## Summary' then '## Exercises'; "
        f"the last headings of level 1-2 are {sections[-3:]}"
    )


@each_chapter
def test_chapter_is_stored_as_run_top_to_bottom_in_a_fresh_kernel(name):
    cells = code_cells(load(name))
    assert cells, f"{name}: no code cells"
    for position, (index, cell) in enumerate(cells, start=1):
        # An empty code cell is never executed, so it would break the count and compare nothing.
        assert cell.source.strip(), f"{name}: {where(index, cell)} is an empty code cell; delete it"
        count = cell.execution_count
        assert count == position, (
            f"{name}: {where(index, cell)} has execution_count {count}, expected {position}: the chapter "
            f"must be stored with its outputs, as `python -m tools.book run {name}` leaves it"
        )


@each_chapter
def test_chapter_stores_errors_only_where_a_cell_is_meant_to_raise(name):
    unexpected = [
        where(index, cell)
        for index, cell in code_cells(load(name))
        if not raises_exception(cell) and any(output.output_type == "error" for output in cell.outputs)
    ]
    assert not unexpected, (
        f"{name}: {', '.join(unexpected)} stored an error; tag a cell 'raises-exception' if it raises on purpose"
    )


def markdown_of(name):
    """The markdown a reader of `name` sees: a page's text, or a chapter's markdown cells."""
    if name.endswith(".md"):
        return (NOTEBOOKS / name).read_text()
    return "\n".join(cell.source for cell in load(name).cells if cell.cell_type == "markdown")


@pytest.mark.parametrize("name", [*chapters(), *sorted(n for n in NOT_CHAPTERS if n.endswith(".md"))])
def test_links_between_pages_lead_to_files_of_the_book(name):
    """A link to another page (the rules of sharing, the glossary, a chapter) names a file that
    is there. Links to the web and to a place in the same page are not followed."""
    broken = []
    for target in LINK.findall(markdown_of(name)):
        path = target.split("#", 1)[0]
        if not path or re.match(r"[a-z][a-z0-9+.-]*:", path):
            continue
        if not (NOTEBOOKS / path).is_file():
            broken.append(target)
    assert not broken, f"{name}: links to files that are not in notebooks/: {broken}"


@pytest.mark.parametrize("name", chapters())
def test_chapter_opens_with_a_link_to_the_glossary(name):
    """Every term, counter and event a chapter uses is defined in the glossary; a reader who
    starts at any chapter finds the link on its first page."""
    opening = next(cell.source for cell in load(name).cells if cell.cell_type == "markdown")
    assert "](glossary.md" in opening, f"{name}: its opening cell does not link to the glossary (glossary.md)"


@each_chapter
def test_chapter_folds_its_solutions_so_the_reader_opens_them_when_ready(name):
    """The reading edition shows no answer under its question: every solution cell is stored
    folded (JupyterLab shows a bar; a click opens it), as `python -m ptsim.editions notebooks
    --fold` leaves it; every other cell is open."""
    from ptsim.editions import FOLDED, student_edition

    nb = load(name)
    stripped = student_edition(nb, name)  # a cell the student edition changes holds a solution
    for index, (cell, student) in enumerate(zip(nb.cells, stripped.cells)):
        folded = {k: v for k, v in cell.metadata.get("jupyter", {}).items() if k in FOLDED}
        assert (folded == FOLDED) == (cell.source != student.source), where(index, cell)
