"""Chapter 9's timeline (Figure 9.1) stays readable at the notebook's width.

The figure's cell prints the size its smallest label has once JupyterLab has scaled the figure
to its width; the book's standard is at least 80 % of the body text (about 14 px)."""

import re

import nbformat

from tools.book import NOTEBOOKS

CHAPTER = NOTEBOOKS / "09-what-came-after.ipynb"
TIMELINE_CELL = "8d14f7ab"
BODY_PX = 14
SMALLEST = re.compile(r"smallest label: ([0-9.]+) px at the notebook's width")


def stored_text(cell):
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def test_timeline_labels_are_at_least_80_percent_of_the_body_text():
    nb = nbformat.read(CHAPTER, as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == TIMELINE_CELL)
    found = SMALLEST.search(stored_text(cell))
    assert found, f"cell {TIMELINE_CELL} no longer prints the size of its smallest label"
    assert float(found.group(1)) >= 0.8 * BODY_PX, (
        f"Figure 9.1: smallest label {found.group(1)} px, under 80 % of the {BODY_PX} px body text"
    )
