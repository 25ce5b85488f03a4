"""The book in a real browser: JupyterLab in Debian's chromium, driven by Playwright as a reader
would drive it. Every chapter listed in book.toml opens, runs all its cells and shows no error it
did not store; in each chapter that builds a `Lab(`, every press of the lab's buttons changes
every picture and every event log it shows (and a fork its counters). Screenshots go to
artifacts/browser/, with one of the page whenever a test fails."""

import re

import nbformat
import pytest

from tools.book import NOTEBOOKS, chapters

pytestmark = pytest.mark.browser

# The lab's buttons in the order a reader would press them: fork first, so that there is a
# child to write into, unshare, munmap and exit.
BUTTONS = ("fork", "write", "read", "munmap", "mprotect", "exit")
# Running a chapter in the browser: the chapter's own 30 s, plus rendering, on a loaded machine.
RUN_ALL_MS = 180_000
# A press runs kernel code and redraws a picture: seconds on a loaded machine, never a minute.
PRESS_MS = 60_000
CODE_PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputPrompt"


def stored(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def lab_chapters():
    """Chapters whose code builds a lab (the chapters' brief puts it in a cell containing `Lab(`)."""
    return [
        name
        for name in chapters()
        if (NOTEBOOKS / name).is_file()
        and any(cell.cell_type == "code" and "Lab(" in cell.source for cell in stored(name).cells)
    ]


def expect(*args, **kwargs):
    """Playwright's expect, imported when first used: a missing playwright then fails through
    the `browser` fixture's message, which says how to install it."""
    from playwright.sync_api import expect

    return expect(*args, **kwargs)


def open_chapter(page, jupyterlab, name):
    """Open the chapter in a fresh workspace and wait until its kernel is idle."""
    page.goto(f"{jupyterlab.url}/lab/tree/{name}?reset&token={jupyterlab.token}")
    wait_for_idle_kernel(page)


def wait_for_idle_kernel(page, timeout=60_000):
    # A Run All clicked before the kernel is ready is lost (seen on this machine).
    expect(page.locator("#jp-main-statusbar")).to_contain_text(re.compile(r"\| Idle"), timeout=timeout)


def menu(page, menu_name, item):
    page.get_by_role("menuitem", name=menu_name, exact=True).click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def run_all(page):
    """Clear every output, then Run All Cells from the Run menu, as a reader would; return once
    the kernel is done: no cell is queued ([*]) and, since stored counts were cleared, a numbered
    prompt is one this run wrote. A cell that raises stops Run All and leaves the rest blank."""
    menu(page, "View", "Expand All Code")  # the folded solutions, whose prompts are hidden with them
    menu(page, "Edit", "Clear Outputs of All Cells")
    expect(page.locator(CODE_PROMPTS).filter(has_text=re.compile(r"\d"))).to_have_count(0)
    menu(page, "Run", "Run All Cells")
    page.wait_for_function(
        """selector => {
            const prompts = [...document.querySelectorAll(selector)].map(p => p.textContent.trim());
            return !prompts.includes('[*]:') && prompts.some(p => /^\\[\\d+\\]:$/.test(p));
        }""",
        arg=CODE_PROMPTS,
        timeout=RUN_ALL_MS,
    )
    wait_for_idle_kernel(page)


def tracebacks(page):
    """The text of every Python error shown (JupyterLab renders errors as stderr, warnings too).
    Text contents, not inner texts: cells scrolled out of view render no inner text."""
    stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
    return [text for text in stderr.all_text_contents() if "Traceback (most recent call last)" in text]


def test_some_chapter_builds_a_lab():
    assert lab_chapters(), "no chapter listed in book.toml builds a Lab( ...): nothing to press"


@pytest.mark.parametrize("name", chapters())
def test_chapter_runs_in_jupyterlab_with_no_error_it_did_not_store(name, page, jupyterlab, artifacts):
    code = [cell for cell in stored(name).cells if cell.cell_type == "code"]
    open_chapter(page, jupyterlab, name)
    page.screenshot(path=artifacts / f"{name[:-6]}-opened.png")
    # The reading edition: each solution opens folded (a placeholder bar in place of its code).
    folded = sum(bool(cell.metadata.get("jupyter", {}).get("source_hidden")) for cell in stored(name).cells)
    expect(page.locator(".jp-Notebook .jp-InputPlaceholder")).to_have_count(folded)
    run_all(page)
    page.screenshot(path=artifacts / f"{name[:-6]}-run-all.png")
    shown = tracebacks(page)
    expected = sum(output.output_type == "error" for cell in code for output in cell.outputs)
    errors = "\n".join(shown)
    assert len(shown) == expected, f"{name}: {len(shown)} errors in the browser, {expected} stored:\n{errors}"
    prompts = page.locator(CODE_PROMPTS).all_text_contents()
    unrun = [index for index, prompt in enumerate(prompts, start=1) if not re.fullmatch(r"\[\d+\]:", prompt.strip())]
    assert len(prompts) == len(code) and not unrun, f"{name}: Run All did not run code cells {unrun} of {len(code)}"


def expect_each_changed(items, before, what, button):
    """Each of `items` (pictures by their src, anything else by its text) differs from `before`."""
    for index, old in enumerate(before):
        item, message = items.nth(index), f"{what} {index} did not change after pressing {button!r}"
        if what == "picture":
            expect(item, message).not_to_have_attribute("src", old, timeout=PRESS_MS)
        else:
            expect(item, message).not_to_have_text(old, timeout=PRESS_MS)


@pytest.mark.parametrize("name", lab_chapters())
def test_lab_buttons_change_every_picture_and_log(name, page, jupyterlab, artifacts):
    """The chapter's first lab: one column per policy, each with its picture, log and counters."""
    open_chapter(page, jupyterlab, name)
    run_all(page)
    lab = page.locator(".ptsim-lab").first
    pictures, logs = lab.locator("img.ptsim-picture"), lab.locator(".ptsim-log")
    counters = lab.locator(".ptsim-counters")
    expect(pictures.first).to_be_visible()
    assert pictures.count() >= 1 and logs.count() >= 1 and counters.count() >= 1
    lab.screenshot(path=artifacts / f"{name[:-6]}-lab-0.png")
    for step, button in enumerate(BUTTONS, start=1):
        sources = [picture.get_attribute("src") for picture in pictures.all()]
        texts, counts = logs.all_text_contents(), counters.all_text_contents()
        lab.get_by_role("button", name=button, exact=True).click()
        expect_each_changed(pictures, sources, "picture", button)
        expect_each_changed(logs, texts, "log", button)
        if button == "fork":  # a fork copies or shares tables under every policy: the counters move
            expect_each_changed(counters, counts, "counters", button)
        lab.screenshot(path=artifacts / f"{name[:-6]}-lab-{step}-{button}.png")
