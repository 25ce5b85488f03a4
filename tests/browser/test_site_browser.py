"""The static site (`make site`, tools/site.py) in a real browser, offline: Debian's chromium,
driven by Playwright, opens every page from file:// with every request that is not for a local
file refused. A page fails on a refused or failed request, an error in the console or a script,
a link to a local file that does not exist or to an anchor that is not there, an image that
does not load, or (a chapter) fewer rendered widgets than the chapter stores widget views.
Screenshots go to artifacts/browser/site-*.png."""

import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pytest

from tools.book import NOTEBOOKS, chapters
from tools.site import APPENDICES, WIDGET_VIEW, NpmMissing, build

pytestmark = pytest.mark.browser

PAGES = ["index.html", *(Path(name).stem + ".html" for name in [*chapters(), *APPENDICES])]
# The widget manager renders every view within seconds; a loaded machine gets more.
RENDER_MS = 60_000


def stored_views(page_name):
    """How many widget views the chapter behind `page_name` stores (0 for other pages)."""
    notebook = NOTEBOOKS / (page_name.removesuffix(".html") + ".ipynb")
    if not notebook.is_file():
        return 0
    nb = nbformat.read(notebook, as_version=4)
    return sum(
        WIDGET_VIEW in output.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


class Anchors(HTMLParser):
    """The fragment targets of an HTML page: every id, and every <a name>."""

    def __init__(self, markup):
        super().__init__()
        self.found = set()
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.found.update(value for key, value in attrs.items() if key == "id" and value)
        if tag == "a" and attrs.get("name"):
            self.found.add(attrs["name"])


@pytest.fixture(scope="session")
def site(tmp_path_factory):
    """The site, built once for the session into a temporary folder."""
    out = tmp_path_factory.mktemp("site") / "site"
    try:
        names = build(out)
    except NpmMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(str(missing))
        pytest.skip(str(missing))
    assert names == PAGES, f"the site's pages {names} are not the index, book.toml's chapters and {APPENDICES}"
    return out


@pytest.fixture
def offline_tab(browser):
    """A fresh tab that loads only file:// URLs and records everything that went wrong."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    tab.set_default_timeout(RENDER_MS)
    problems = []

    def short(url):
        return url if len(url) <= 120 else url[:117] + "..."

    def only_files(route):
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            problems.append(f"refused request: {short(route.request.url)}")
            route.abort()

    tab.route("**/*", only_files)
    tab.on("requestfailed", lambda request: problems.append(f"failed request: {short(request.url)} ({request.failure})"))
    tab.on("console", lambda message: message.type == "error" and problems.append(f"console error: {message.text}"))
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    try:
        yield tab, problems
    finally:
        context.close()


def broken_links(tab, site):
    """Every link to a local file that is missing, or to an anchor its page does not have."""
    broken, anchors = [], {}
    for href in tab.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
        url = urlsplit(href)
        if url.scheme != "file":
            continue  # mailto: and web links are links, not loads: nothing here fetches them
        path = Path(unquote(url.path))
        if not path.is_file():
            broken.append(f"{href}: no such file")
            continue
        if not path.resolve().is_relative_to(site.resolve()):
            broken.append(f"{href}: outside the site")
        elif url.fragment:
            if path not in anchors:
                anchors[path] = Anchors(path.read_text()).found
            # As browsers look a fragment up: as written, then percent-decoded (nbconvert's heading
            # ids keep the escapes of their links, "1--%3E-2" for "1 -> 2").
            if not {url.fragment, unquote(url.fragment)} & anchors[path]:
                broken.append(f"{href}: no such anchor")
    return broken


def wait_for_images(tab):
    """Wait until every image finished loading or failing; return the sources of those that
    did not load (the widgets' images included, once they render)."""
    tab.wait_for_function("() => [...document.images].every(img => img.complete)")
    return tab.eval_on_selector_all("img", "images => images.filter(i => i.naturalWidth === 0).map(i => i.src.slice(0, 80))")


# The widget manager puts each stored view in a .widget-subarea and renders the view into it.
RENDERED = ".widget-subarea > .jupyter-widgets"


def rendered_views(tab, views):
    """Wait (up to RENDER_MS) for `views` widget views to render; return how many rendered, and
    how many of those hold no widget element (a box left empty)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        tab.wait_for_function(
            "([selector, views]) => document.querySelectorAll(selector).length >= views", arg=[RENDERED, views]
        )
    except PlaywrightTimeout:
        pass  # the count is asserted by the caller
    empty = """views => views.filter(view => !view.querySelector('[class*="widget-"]')).length"""
    return tab.locator(RENDERED).count(), tab.eval_on_selector_all(RENDERED, empty)


@pytest.mark.parametrize("name", PAGES)
def test_site_page_works_offline(name, site, offline_tab, artifacts):
    tab, problems = offline_tab
    tab.goto((site / name).as_uri(), wait_until="load")
    views = stored_views(name)
    rendered, empty = rendered_views(tab, views) if views else (tab.locator(RENDERED).count(), 0)
    unloaded = wait_for_images(tab)
    tab.screenshot(path=artifacts / f"site-{name.removesuffix('.html')}.png")

    assert not problems, f"{name}:\n" + "\n".join(problems)
    assert rendered == views, f"{name}: {rendered} widgets rendered, the chapter stores {views} widget views"
    assert not empty, f"{name}: {empty} of the rendered widget views show nothing"
    assert not unloaded, f"{name}: images that did not load: {unloaded}"
    broken = broken_links(tab, site)
    assert not broken, f"{name}: broken links:\n" + "\n".join(broken)


def test_every_page_links_every_page_and_the_index_lists_the_chapters_in_order(site):
    """The table of contents on each page reaches every page of the site; the index lists the
    chapters in book.toml's order."""
    for name in PAGES:
        markup = (site / name).read_text()
        linked = set(re.findall(r'<a href="([^"#]+\.html)"', markup))
        assert set(PAGES) <= linked | {name}, f"{name} does not link {sorted(set(PAGES) - linked - {name})}"
    # The index's own text: between the navigation at its top and that at its bottom.
    text = (site / "index.html").read_text().split("</nav>", 1)[1].split("<nav", 1)[0]
    listed = re.findall(r'<a href="([^"#]+\.html)"', text)
    chapter_pages = [Path(name).stem + ".html" for name in chapters()]
    assert [href for href in listed if href in chapter_pages] == chapter_pages
