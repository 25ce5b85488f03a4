"""Every picture a chapter shows is readable at the notebook's width: each chapter runs in a
fresh kernel in which every figure displayed inline is measured as the reader will see it
(`ptsim.draw.style.shown_texts`: its tight box, scaled down to the output's width), before it is
drawn. tests/test_draw.py holds ptsim's own drawing functions to the same rule on chosen inputs;
this test holds the figures the chapters make themselves (and ptsim's, on the chapters' data).
Widgets' pictures are saved without a tight box and are measured in tests/test_draw.py."""

import json

import nbformat
import pytest

from ptsim.draw import style
from tools.book import NOTEBOOKS, chapters, run

# Runs first in the chapter's kernel: every figure the inline backend displays (it saves with
# bbox_inches="tight"; a widget's PNG is saved without) is measured and its smallest text kept.
MEASURE = """\
import matplotlib.backend_bases as _backend_bases
from ptsim.draw.style import shown_texts as _shown_texts

_FIGURES_SHOWN = []
_print_figure = _backend_bases.FigureCanvasBase.print_figure


def _measured_print_figure(self, *args, **kwargs):
    if kwargs.get("bbox_inches") == "tight":
        texts = _shown_texts(self.figure)
        _FIGURES_SHOWN.append((get_ipython().execution_count, min(texts, key=lambda t: t[1], default=("", 99.0))))
    return _print_figure(self, *args, **kwargs)


_backend_bases.FigureCanvasBase.print_figure = _measured_print_figure
"""
REPORT = "import json as _json\nprint(_json.dumps(_FIGURES_SHOWN))"


@pytest.mark.parametrize("name", chapters())
def test_every_figure_of_the_chapter_is_readable_at_the_notebooks_width(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    stored = sum("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    nb.cells = [nbformat.v4.new_code_cell(MEASURE), *code, nbformat.v4.new_code_cell(REPORT)]
    run(nb, NOTEBOOKS)
    shown = json.loads(nb.cells[-1].outputs[-1]["text"])
    assert len(shown) == stored, f"{name}: {len(shown)} figures measured, {stored} stored as pictures"
    small = [
        f"cell {code[count - 2].get('id')}: {text!r} at {px:.1f} px"
        for count, (text, px) in shown
        if px < style.MIN_PX
    ]
    assert not small, (
        f"{name}: text under {style.MIN_PX:.1f} px (80 % of the {style.BODY_PX:.0f}-px body text) at the "
        f"notebook's width, smallest of each figure: {small}"
    )
