"""The book as a static web site that works offline and from file://.

`make site` (`python -m tools.site [OUT]`) builds build/site/ from book.toml: index.html (the
book's title, what the book is, from the opening of README.md, and the chapter list), every
chapter with its stored outputs under the notebook's own name (01-page-tables.html, ...), the
rules of sharing and the glossary. Every page has the table of contents and previous/next links;
links to chapters, to rules-of-sharing.md and to glossary.md point at the built pages.

Everything a page loads ships in the site: nbconvert's lab template, its styles in one book.css,
no require.js, MathJax or mermaid (the chapters use none), and the widget manager of the npm
registry's @jupyter-widgets/html-manager (its prebuilt dist/embed.js and fonts, fetched with
`npm pack` into build/npm/, checked against the pinned integrity, with its licence). It renders
the widget states stored in the chapters; a widget whose controls need a Python kernel shows
the state it was stored in, with a note saying where to run it.

    python -m tools.site [OUT]    build the site into OUT (default: build/site/)
"""

import argparse
import base64
import hashlib
import html
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jinja2
import nbformat
from nbconvert import HTMLExporter

from tools.book import NOTEBOOKS, ROOT, chapters, title

SITE = ROOT / "build" / "site"
NPM_CACHE = ROOT / "build" / "npm"
README = ROOT / "README.md"
# The pages after the chapters, in this order: the rules the chapters cite and the glossary.
APPENDICES = ("rules-of-sharing.md", "glossary.md")

# The widget manager: its prebuilt bundle renders ipywidgets 8 states (the venv's ipywidgets)
# without require.js. Pinned, and checked against the registry's integrity for this version
# (`npm view @jupyter-widgets/html-manager@1.0.15 dist.integrity`).
HTML_MANAGER = "@jupyter-widgets/html-manager"
HTML_MANAGER_VERSION = "1.0.15"
HTML_MANAGER_INTEGRITY = "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="
# What the site takes from the package's dist/: the bundle, its third-party notices and the
# Font Awesome fonts its CSS loads relative to it (not the source maps or the AMD bundles).
# Font Awesome's CSS also names .eot (Internet Explorer) and .svg fonts, which no browser that
# runs embed.js loads: they stay out.
WIDGET_FILES = re.compile(r"package/dist/(embed\.js|embed\.js\.LICENSE\.txt|[0-9a-f]{20}\.(ttf|woff2?))")
WIDGETS_DIR = "widgets"
# The styles every page inlines (the lab theme, code highlighting, the site's own), shipped once.
STYLESHEET = "book.css"
STYLES = re.compile(r"<style[^>]*>(.*?)</style>\s*", flags=re.DOTALL)

# Widget models that only show something: a view made of these alone needs no kernel.
DISPLAY_ONLY = {
    "BoxModel", "HBoxModel", "VBoxModel", "GridBoxModel", "HTMLModel", "HTMLMathModel",
    "LabelModel", "ImageModel", "IntProgressModel", "FloatProgressModel", "OutputModel",
    "LayoutModel",
}  # fmt: skip
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{#- Nothing from a CDN: no require.js, MathJax or mermaid (the book uses none of them). -#}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
/* As in JupyterLab: widgets and the navigation in the UI font. */
body { font-family: var(--jp-ui-font-family); }
.ptsim-site-nav { font-family: var(--jp-ui-font-family); font-size: var(--jp-ui-font-size1);
  border-bottom: 1px solid var(--jp-border-color2); margin: 0 0 1em; padding: 0.5em 0; }
.ptsim-site-nav:last-child { border-top: 1px solid var(--jp-border-color2); border-bottom: 0; margin: 2em 0 0; }
.ptsim-site-nav details summary { cursor: pointer; }
.ptsim-site-nav ul { margin: 0.3em 0 0.3em 1.5em; padding: 0; list-style: none; }
.ptsim-site-nav li[aria-current] { font-weight: bold; }
.ptsim-site-pager { display: flex; justify-content: space-between; gap: 1em; margin-top: 0.3em; }
/* The note on a widget that needs a kernel: a line of its own under the widget (the output
   is laid out as a table: the note is its caption). */
.ptsim-site-note { display: table-caption; caption-side: bottom; margin: 0.3em 0 0.6em var(--jp-cell-prompt-width);
  font-size: var(--jp-ui-font-size1); color: var(--jp-ui-font-color2); }
</style>
{%- endblock extra_css -%}
{%- macro site_nav(site, toc) -%}
<nav class="ptsim-site-nav" aria-label="book">
{%- if toc %}
<details><summary>Contents: {{ site.book_title | e }}</summary>
<ul>
{%- for entry in site.toc %}
<li{% if entry.current %} aria-current="page"{% endif %}><a href="{{ entry.href }}">{{ entry.title | e }}</a></li>
{%- endfor %}
</ul></details>
{%- endif %}
<div class="ptsim-site-pager">
<span>{% if site.prev %}<a rel="prev" href="{{ site.prev.href }}">&larr; {{ site.prev.title | e }}</a>{% endif %}</span>
<span>{% if site.next %}<a rel="next" href="{{ site.next.href }}">{{ site.next.title | e }} &rarr;</a>{% endif %}</span>
</div>
</nav>
{%- endmacro -%}
{%- block body_header -%}
{{ super() }}
{{ site_nav(resources.ptsim_site, toc=True) }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ site_nav(resources.ptsim_site, toc=False) }}
{{ super() }}
{%- endblock body_footer -%}
{%- block data_widget_view scoped -%}
{{ super() }}
{%- if output.data['application/vnd.jupyter.widget-view+json'].model_id in resources.ptsim_site.needs_kernel %}
<p class="ptsim-site-note">These controls need a Python kernel: this page shows them as the chapter
stored them. To use them, run the chapter in JupyterLab (<code>make book</code> in a checkout of
the book) or on Binder.</p>
{%- endif %}
{%- endblock data_widget_view -%}
{%- block footer_js -%}
{%- if "widgets" in nb.metadata %}
<script src="{{ resources.ptsim_site.widgets }}/embed.js"></script>
{%- endif %}
{%- endblock footer_js -%}
"""


def first_heading(text):
    """The text of the first Markdown heading (# ...) in `text`, or None."""
    match = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE)
    return match and match.group(1)


def plain(markdown):
    """A heading's Markdown as plain text, for the table of contents (code spans lose their ``)."""
    return re.sub(r"`([^`]*)`", r"\1", markdown)


def opening(readme):
    """What the book is: README.md's first paragraph after its title."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", readme) if p.strip()]
    prose = [p for p in paragraphs if not p.startswith(("#", "[!", "<", "```"))]
    if not prose:
        raise ValueError("README.md: no paragraph after the title says what the book is")
    return prose[0]


class NpmMissing(RuntimeError):
    """The widget manager is neither in build/npm/ nor fetchable: no npm on this machine."""


@dataclass
class Page:
    """One page of the site: its source file, its file name, its title and the notebook that
    nbconvert renders (a .md file's text as one Markdown cell)."""

    source: Path
    name: str
    title: str
    notebook: nbformat.NotebookNode | None


def pages():
    """Every page in reading order: the index, the chapters, the rules, the glossary."""
    index = Page(README, "index.html", "About the book", None)
    result = [index]
    for name in [*chapters(), *APPENDICES]:
        path = NOTEBOOKS / name
        if name.endswith(".ipynb"):
            nb = nbformat.read(path, as_version=4)
            text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
        else:
            nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(path.read_text())])
            text = path.read_text()
        title = first_heading(text)
        if title is None:
            raise ValueError(f"{name}: no heading to take the page's title from")
        result.append(Page(path, Path(name).stem + ".html", plain(title), nb))
    index.notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(index_markdown(result[1:]))])
    return result


def index_markdown(others):
    """The index: the title, what the book is, and the list of chapters and appendices."""
    listed = [page for page in others if page.source.suffix == ".ipynb"]
    lines = [f"# {title()}", "", opening(README.read_text()), "", "## Chapters", ""]
    # Links to the sources, as README.md would write them: rewrite_links points them at the pages.
    # A bullet list: each chapter's title holds its number already ("4. Phillips' idea").
    lines += [f"- [{page.title}]({page.source.relative_to(ROOT)})" for page in listed]
    lines += ["", "## Appendices", ""]
    lines += [f"- [{page.title}]({page.source.relative_to(ROOT)})" for page in others if page not in listed]
    lines += [
        "",
        "Each chapter is shown with the outputs stored in its notebook; to run it, and to use its "
        "controls, open it in JupyterLab (`make book` in a checkout of the book) or on Binder.",
    ]
    return "\n".join(lines)


def needs_kernel(nb):
    """The model ids of the widget views in `nb` that contain a control (a model that is not
    display-only): they answer a reader only through a kernel."""
    state = nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})

    def has_control(model_id, seen):
        if model_id in seen or model_id not in state:
            return False
        seen.add(model_id)
        model = state[model_id]
        if model["model_name"] not in DISPLAY_ONLY and not model["model_name"].endswith("StyleModel"):
            return True
        refs = re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(model.get("state", {})))
        return any(has_control(ref, seen) for ref in refs)

    views = [
        output.data[WIDGET_VIEW]["model_id"]
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if WIDGET_VIEW in output.get("data", {})
    ]
    return {view for view in views if has_control(view, set())}


def exporter():
    return HTMLExporter(
        template_name="lab",
        template_file="ptsim-site.html.j2",
        extra_loaders=[jinja2.DictLoader({"ptsim-site.html.j2": TEMPLATE})],
        theme="light",
    )


LINK = re.compile(r'(<a\b[^>]*?\bhref=")([^"]*)(")')


def rewrite_links(markup, source_dir, targets, page_name):
    """Point each relative link to a page's source (a notebook, rules-of-sharing.md, ...) at
    its built page, keeping the #anchor; links to built pages (the navigation) stay. A relative
    link to anything else would be broken on the site: refuse it."""
    built, broken = set(targets.values()), []

    def rewrite(match):
        href = html.unescape(match.group(2))
        parts = urlsplit(href)
        if parts.scheme or parts.netloc or not parts.path or parts.path in built:
            return match.group(0)  # an external link, an anchor on this page or a built page
        target = targets.get((source_dir / unquote(parts.path)).resolve())
        if target is None:
            broken.append(href)
            return match.group(0)
        fragment = f"#{parts.fragment}" if parts.fragment else ""
        return match.group(1) + html.escape(target + fragment) + match.group(3)

    markup = LINK.sub(rewrite, markup)
    if broken:
        raise ValueError(f"{page_name}: links to files that are not pages of the site: {broken}")
    return markup


def widget_manager(out):
    """Unpack the pinned html-manager's bundle, fonts and licence into out/widgets/; the
    package comes from `npm pack` (npm's cache first), kept in build/npm/."""
    tarball = NPM_CACHE / f"jupyter-widgets-html-manager-{HTML_MANAGER_VERSION}.tgz"
    if not tarball.is_file() or integrity(tarball) != HTML_MANAGER_INTEGRITY:
        npm = shutil.which("npm")
        if npm is None:
            raise NpmMissing("npm is missing: `sudo apt-get install npm` (it fetches the widget manager)")
        NPM_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "pack", f"{HTML_MANAGER}@{HTML_MANAGER_VERSION}", "--prefer-offline", "--silent",
             "--pack-destination", str(NPM_CACHE)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        if integrity(tarball) != HTML_MANAGER_INTEGRITY:
            raise RuntimeError(f"{tarball}: not the {HTML_MANAGER}@{HTML_MANAGER_VERSION} this build pins")
    target = out / WIDGETS_DIR
    target.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        package = json.load(archive.extractfile("package/package.json"))
        members = [member for member in archive.getmembers() if WIDGET_FILES.fullmatch(member.name)]
        for member in members:
            (target / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    if not (target / "embed.js").is_file():
        raise RuntimeError(f"{tarball}: no package/dist/embed.js")
    (target / "LICENSE.txt").write_text(licence(package))


def integrity(path):
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def licence(package):
    """The widget manager's licence: the package names its licence but ships no text of it;
    the text is that of its repository, jupyter-widgets/ipywidgets, which the venv's ipywidgets
    distribution carries."""
    ipywidgets = importlib.metadata.distribution("ipywidgets")
    files = [file for file in ipywidgets.files or [] if file.name == "LICENSE"]
    if not files:
        raise RuntimeError("ipywidgets ships no LICENSE file to copy the widget manager's licence from")
    return "\n".join([
        f"embed.js and the fonts here are from the npm registry's {package['name']}@{package['version']}",
        f"({HTML_MANAGER_INTEGRITY}), by {package['author']}, {package['repository']['url']}.",
        f"Its licence ({package['license']}), as in that repository:",
        "",
        files[0].read_text().strip(),
        "",
        "embed.js bundles third-party code; its notices are in embed.js.LICENSE.txt. The fonts are",
        "Font Awesome Free 5 (https://fontawesome.com/license/free: icons CC BY 4.0, fonts SIL OFL 1.1).",
        "",
    ])  # fmt: skip


def build(out=SITE):
    """Build the site into `out` (emptied first). Returns the pages' file names."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    widget_manager(out)
    book = pages()
    targets = {page.source.resolve(): page.name for page in book}
    toc = [{"href": page.name, "title": page.title} for page in book]
    html_exporter = exporter()
    book_title = title()
    for position, page in enumerate(book):
        site = {
            "book_title": book_title,
            "toc": [entry | {"current": index == position} for index, entry in enumerate(toc)],
            "prev": toc[position - 1] if position > 0 else None,
            "next": toc[position + 1] if position + 1 < len(toc) else None,
            "needs_kernel": needs_kernel(page.notebook),
            "widgets": WIDGETS_DIR,
        }
        markup, _ = html_exporter.from_notebook_node(
            page.notebook, resources={"ptsim_site": site, "metadata": {"name": page.title if position else book_title}}
        )
        markup = rewrite_links(markup, page.source.parent, targets, page.source.name)
        head, body = markup.split("</head>", 1)
        styles = "\n".join(STYLES.findall(head))
        if (out / STYLESHEET).exists() and (out / STYLESHEET).read_text() != styles:
            raise RuntimeError(f"{page.name}: its styles differ from the other pages'")
        (out / STYLESHEET).write_text(styles)
        link = f'<link rel="stylesheet" href="{STYLESHEET}"/>\n'
        head = STYLES.sub(lambda _: "", STYLES.sub(lambda _: link, head, count=1))
        (out / page.name).write_text(head + "</head>" + body)
    return [page.name for page in book]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=SITE, help=f"where to build it (default: {SITE})")
    args = parser.parse_args(argv)
    names = build(args.out)
    print(f"{args.out}: {len(names)} pages ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
