"""environment.yml (Binder, conda) lists what the book needs to run, as pyproject.toml says it;
postBuild installs ptsim itself; the README's Binder link opens the first chapter."""

import ast
import importlib.metadata
import json
import os
import re
import shlex
import sys
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tools.book import NOTEBOOKS, ROOT, chapters

# conda-forge's name where it is not PyPI's: matplotlib-base is matplotlib without the Qt toolkit
CONDA_NAMES = {"matplotlib": "matplotlib-base"}
# what environment.yml lists beyond ptsim's dependencies: the interpreter, and pip for postBuild
CONDA_ONLY = {"python", "pip"}


def pyproject():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def environment():
    with open(ROOT / "environment.yml") as f:
        return yaml.safe_load(f)


def conda_specs():
    """{name: SpecifierSet} of environment.yml's dependencies (conda's `name>=x` is PEP 440's)."""
    specs = {}
    for entry in environment()["dependencies"]:
        assert isinstance(entry, str), f"environment.yml: {entry!r} (a pip: section) installs around conda"
        requirement = Requirement(entry)
        assert requirement.name not in specs, f"environment.yml lists {requirement.name} twice"
        specs[requirement.name] = requirement.specifier
    return specs


def test_environment_lists_exactly_the_runtime_dependencies_with_their_floors():
    wanted = {CONDA_NAMES.get(r.name, r.name): r.specifier for r in map(Requirement, pyproject()["dependencies"])}
    listed = conda_specs()
    assert {name: spec for name, spec in listed.items() if name not in CONDA_ONLY} == wanted
    assert listed["python"] == SpecifierSet(pyproject()["requires-python"])
    assert listed["pip"] == SpecifierSet()
    assert environment()["channels"] == ["conda-forge"]


def test_environment_leaves_out_the_test_tools():
    test_tools = {Requirement(r).name for r in pyproject()["optional-dependencies"]["test"]}
    assert test_tools and not test_tools & set(conda_specs())


def runtime_closure():
    """The distributions the runtime dependencies bring, transitively, as installed here."""
    seen, todo = set(), [Requirement(r) for r in pyproject()["dependencies"]]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in importlib.metadata.requires(name) or ()]
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name}, which ptsim needs at run time, is not installed here")
    return seen


def imported_modules(source):
    """Top-level names of the absolute imports in Python source (IPython's %magics and !shell dropped)."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def book_sources():
    """(where, source) of every chapter's code cell and every module of ptsim."""
    for name in chapters():
        for cell in json.loads((NOTEBOOKS / name).read_text())["cells"]:
            if cell["cell_type"] == "code":
                yield f"{name} cell {cell.get('id')}", "".join(cell["source"])
    for path in sorted((ROOT / "ptsim").rglob("*.py")):
        yield str(path.relative_to(ROOT)), path.read_text()


def test_everything_the_chapters_and_ptsim_import_comes_with_the_runtime_dependencies():
    """A chapter run on Binder has only environment.yml's packages and what they bring: every
    import of the chapters and of ptsim is the standard library, ptsim, or a module of one."""
    closure = runtime_closure()
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for where, source in book_sources():
        for module in imported_modules(source) - set(sys.stdlib_module_names) - {"ptsim"}:
            if not {canonicalize_name(d) for d in distributions.get(module, ())} & closure:
                missing.setdefault(module, where)
    assert not missing, f"imported, but not brought by pyproject's dependencies: {missing}"


def test_imported_modules_finds_every_kind_of_import():
    assert imported_modules("%matplotlib inline\nimport a.b, c\nfrom d.e import f\nfrom . import g\n") == {"a", "c", "d"}


def test_postbuild_installs_ptsim_without_touching_condas_packages():
    post_build = ROOT / "postBuild"
    assert os.access(post_build, os.X_OK), "Binder runs postBuild only if it is executable"
    commands = [shlex.split(line) for line in post_build.read_text().splitlines() if line and not line.startswith("#")]
    installs = [c for c in commands if "pip" in c and "install" in c]
    assert len(installs) == 1, installs
    [install] = installs
    assert "--no-deps" in install and install[-1] == "." and install[-2] == "-e"


def test_readme_binder_link_opens_the_first_chapter_in_jupyterlab():
    readme = (ROOT / "README.md").read_text()
    urls = re.findall(r"https://mybinder\.org/v2/gh/[^)\s>]+", readme)
    assert urls, "README.md has no mybinder.org link"
    first = chapters()[0]
    for url in urls:
        assert re.fullmatch(r"https://mybinder\.org/v2/gh/[\w.-]+/[\w.-]+/HEAD\?urlpath=lab/tree/notebooks/" + re.escape(first), url), url
    assert "https://mybinder.org/badge_logo.svg" in readme
