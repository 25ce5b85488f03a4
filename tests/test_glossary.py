"""The glossary (notebooks/glossary.md) defines every name ptsim shows a reader: each counter,
each event action the kernel can emit, each fault kind, each policy and each policy switch.
The names are collected from the code, so a new one without an entry fails here, and an entry
for a name the code no longer has fails too.

An entry is a top-level bullet `- **name**: definition` (the name may be in backticks) under
one of the glossary's `## ` sections."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import ptsim
from ptsim.exercises import FAULT_KINDS
from ptsim.kernel import COUNTERS, POLICIES, SharedPolicy
from tools.book import NOTEBOOKS

GLOSSARY = NOTEBOOKS / "glossary.md"
PACKAGE = Path(ptsim.__file__).parent
ENTRY = re.compile(r"- \*\*`?([^*`]+?)`?\*\*:\s*(.*)")
# A definition says something: a few words at least, not just a link or a stub.
MIN_WORDS = 4


def sections() -> dict[str, dict[str, str]]:
    """{section title: {name: definition}}: the entries under each `## ` heading, with the
    definition's continuation lines joined."""
    found: dict[str, dict[str, str]] = {}
    entries: dict[str, str] | None = None
    name = None
    for line in GLOSSARY.read_text().splitlines():
        if line.startswith("## "):
            entries = found.setdefault(line[3:].strip(), {})
            name = None
        elif entries is not None and (match := ENTRY.fullmatch(line)):
            name = match.group(1)
            assert name not in entries, f"glossary.md: {name!r} is defined twice"
            entries[name] = match.group(2)
        elif name is not None and line.startswith("  ") and line.strip():
            entries[name] += " " + line.strip()
        else:
            name = None
    return found


def entries(section: str) -> dict[str, str]:
    found = sections()
    assert section in found, f"glossary.md has no section '## {section}' (it has {sorted(found)})"
    return found[section]


def emitted_actions() -> dict[str, list[str]]:
    """Every action a kernel function passes to `tracer.emit`, with where: read from the source,
    so that an action added to the kernel is found without anyone listing it."""
    actions: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            func = getattr(node, "func", None)
            if not (isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.attr == "emit"):
                continue
            if not (isinstance(func.value, ast.Attribute) and func.value.attr == "tracer"):
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
            assert len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str), (
                f"{where}: tracer.emit's action is not a string literal, so the glossary test cannot collect it"
            )
            actions.setdefault(node.args[1].value, []).append(where)
    return actions


def missing_and_stale(defined, wanted, what):
    missing, stale = sorted(set(wanted) - set(defined)), sorted(set(defined) - set(wanted))
    return (f"glossary.md lacks an entry for the {what} {missing}; " if missing else "") + (
        f"glossary.md defines {what} the code does not have: {stale}" if stale else ""
    )


def test_every_counter_has_an_entry():
    problem = missing_and_stale(entries("Counters"), COUNTERS, "counters")
    assert not problem, problem


def test_every_event_action_the_kernel_can_emit_has_an_entry():
    actions = emitted_actions()
    problem = missing_and_stale(entries("Event actions"), actions, "event actions")
    assert not problem, problem + f" (emitted at: {actions})"


def test_every_fault_kind_has_an_entry():
    kinds = set(FAULT_KINDS) | {name.removeprefix("fault_") for name in COUNTERS if name.startswith("fault_")}
    problem = missing_and_stale(entries("Fault kinds"), kinds, "fault kinds")
    assert not problem, problem


def run_every_kind_of_step(m):
    """Fork, read, write, fill or unshare, swap, mprotect, munmap, exec and exit on `m`."""
    page, span = m.arch.page_size, m.arch.pte_span
    p = m.spawn()
    private = p.mmap(None, span, "rw", False)
    shared = p.mmap(None, span, "rw", True)
    p.write(private, b"x" * page)
    p.write(shared, b"s")
    child = p.fork()
    child.read(private + page, 1)  # an empty entry of a shared table: a fill, or an unshare
    child.read(shared + page, 1)
    child.write(private, b"y")
    m.swap_out(p, private)
    p.read(private, 1)
    p.mprotect(private, page, "r")
    p.munmap(shared, page)
    child.exec()
    p.exit()


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_collected_actions_cover_every_action_a_run_emits(policy):
    """The source scan is the glossary's list of actions: it must find whatever a run reports."""
    m = ptsim.Machine(arch="toy", policy=policy, ram=1 << 14)
    with m.trace() as events:
        run_every_kind_of_step(m)
    seen = {e.action for e in events}
    assert len(seen) > 5, f"the run emitted too few kinds of event to test anything: {sorted(seen)}"
    unfound = sorted(seen - set(emitted_actions()))
    assert not unfound, f"the run emitted actions the source scan did not find: {unfound}"


def test_every_policy_and_switch_and_switch_value_has_an_entry():
    terms = entries("Terms")
    switches = [name for name in inspect.signature(SharedPolicy.__init__).parameters if name != "self"]
    missing = [name for name in [*POLICIES, *switches] if name not in terms]
    assert not missing, f"glossary.md: '## Terms' lacks an entry for the policies or switches {missing}"
    for name in switches:
        default = inspect.signature(SharedPolicy.__init__).parameters[name].default
        values = getattr(SharedPolicy, f"{name.upper()}S", None)  # READ_FAULTS, WRPROTECTS
        shown = [f'`"{v}"`' for v in values] if values is not None else [f"`{v}`" for v in (False, True)]
        assert values is not None or isinstance(default, bool), f"{name}: neither a list of values nor a bool"
        absent = [s for s in shown if s not in terms[name]]
        assert not absent, f"glossary.md: the entry for {name!r} does not name its values {absent}"


def test_every_entry_defines_something():
    short = [
        f"{section}: {name}"
        for section, found in sections().items()
        for name, definition in found.items()
        if len(definition.split()) < MIN_WORDS
    ]
    assert not short, f"glossary.md: entries with hardly a definition: {short}"


def test_one_box_tells_use_count_refcount_and_mapcount_apart():
    boxes = [title for title in sections() if title.lower().startswith("box")]
    assert len(boxes) == 1, f"glossary.md must have one '## Box: ...' section, not {boxes}"
    title = boxes[0]
    for term in ("use count", "refcount", "mapcount"):
        assert term in title, f"the box '{title}' must name {term!r}"
        assert term in entries("Terms"), f"glossary.md: '## Terms' has no entry {term!r} pointing at the box"
        box = title.split(":", 1)[-1].strip().lower()
        assert box in entries("Terms")[term].lower(), f"the entry {term!r} must point at the box '{title}'"
