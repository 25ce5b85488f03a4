"""Exercises with automatic checks, for the end of each chapter.

Two kinds, both answered in a notebook cell and both checked by ptsim itself:

- `Exercise`: a question about a scenario. The scenario builds a machine and the question reads
  the answer off it (counters, status, use counts, a walk), so the answer is whatever the
  simulator does, never a number typed into the chapter.
- `Challenge`: "make the machine reach state X". The student builds a machine; goals inspect it.

`check()` returns a `Verdict`: short, deterministic text (nbval compares it). A wrong answer says
why when the exercise foresaw the mistake (`diagnose`, which may run the scenario another way to
recognise, say, the count classic fork would give), else it gives the exercise's hint.

`observe` runs one action and reports what the kernel did, from its counters and events. The
read-only inspectors that questions, goals and explanations use (`use_count`, `list_tables`,
`table_pages`, ...) live in `ptsim.peek`.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import InvariantError, ProcessExited
from .hardware import ARCHES
from .kernel import COUNTERS, Event
from .machine import Machine, Process
from .peek import counters_gained, list_tables

# What each fault kind `observe` reports means: one per fault_* counter, with "none" and the
# "unshare" that may come before a kind under the sharing policies.
FAULT_KINDS = {
    "none": "no fault: the entry (or the TLB) already allowed the access",
    "unshare": "handle_mm_fault first copied a shared table into one of the process's own",
    "anon": "do_anonymous_page: first write to an untouched private page, a new zeroed page",
    "zero": "do_anonymous_page: first read of an untouched private page, the zero page read-only",
    "shmem": "do_shared_fault: a MAP_SHARED page mapped from its shmem object",
    "wp_copy": "do_wp_page: a write to a page that is not the process's alone, so it copies it",
    "wp_reuse": "do_wp_page: a write to a read-only page nobody else maps any more: made writable",
    "spurious": "the entry already allowed the access: a stale TLB entry faulted",
    "upper_wp": "only a read-only upper entry forbade the write (policy upper_wp)",
    "swapin": "do_swap_page: a major fault, the page read back from swap",
}
_FAULT_COUNTERS = [name for name in COUNTERS if name.startswith("fault_")]


class Text(str):
    """A string a notebook shows as text rather than as a quoted repr."""

    def __repr__(self) -> str:
        return str(self)


class Verdict:
    """The outcome of a check: true when right; shown as its text."""

    def __init__(self, ok: bool, text: str):
        self.ok = ok
        self.text = text

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.text

    __repr__ = __str__


# -- who is answering ----------------------------------------------------------------------

# The student a notebook's per-student problems are made for, when nothing names one: the
# reader of the book (and the stored outputs nbval compares).
READER = "reader"
# nbgrader runs a submission from <course>/submitted/<student id>/<assignment>/ (autograde
# copies it to autograded/<student id>/<assignment>/ first): the student's id is in the path.
_NBGRADER_PATH = re.compile(r"/(?:submitted|autograded|feedback)/([^/]+)/[^/]+/?$")


def student_id(name: str | None = None) -> str:
    """Whose problems to make: `name` if given; else $PTSIM_STUDENT; else the student whose
    submission nbgrader is grading (read from the working directory, submitted/<id>/<assignment>);
    else $JUPYTERHUB_USER (a class's hub); else READER, the book's reader."""
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"name must be a non-empty string (a student id), not {name!r}")
        return name.strip()
    if os.environ.get("PTSIM_STUDENT", "").strip():
        return os.environ["PTSIM_STUDENT"].strip()
    return submission_student() or os.environ.get("JUPYTERHUB_USER", "").strip() or READER


def submission_student() -> str | None:
    """The student whose submission nbgrader is running (read from the working directory,
    submitted/<id>/<assignment>), or None: what the autograder's hidden tests hold an exercise's
    student to, whatever the submission set in its environment."""
    graded = _NBGRADER_PATH.search(Path.cwd().as_posix())
    return graded.group(1) if graded else None


def student_rng(key: str, student: str | None = None) -> random.Random:
    """The random numbers of problem `key` for `student` (see `student_id`): the same on every
    machine and Python version (a SHA-256 of both, not Python's salted hash), and different
    for every student and every problem."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string naming the problem, not {key!r}")
    digest = hashlib.sha256(f"{student_id(student)}\0{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# -- answers -----------------------------------------------------------------------------


def normal(answer):
    """An answer in one comparable form, or None if it is not an answer at all.

    Numbers stay numbers and numeric strings become numbers ("0x1c" and "28" are 28); words are
    trimmed and lower-cased; lists become tuples. A bool is not an answer: True == 1 in Python,
    and never what a student means by a count.
    """
    if isinstance(answer, (bool, np.bool_)):
        return None
    if isinstance(answer, (int, np.integer)):
        return int(answer)
    if isinstance(answer, str):
        word = answer.strip().lower()
        try:
            return int(word, 0)
        except ValueError:
            return word or None
    if isinstance(answer, (list, tuple)):
        items = tuple(normal(a) for a in answer)
        return None if None in items else items
    return None


def _shown(answer, show: Callable[[int], str]) -> str:
    if isinstance(answer, int):
        return show(answer)
    if isinstance(answer, tuple):
        return "[" + ", ".join(_shown(a, show) for a in answer) + "]"
    return answer


def _describe(value) -> str:
    """A student's value as a verdict shows it: plain values as written, anything else by its
    type (a repr with a memory address would change from run to run)."""
    plain = (bool, int, float, str, type(None), list, tuple, np.integer, np.bool_)
    return repr(value) if isinstance(value, plain) else f"a {type(value).__name__}"


def _callable(name: str, value, optional: bool = False) -> None:
    if not (callable(value) or (optional and value is None)):
        raise ValueError(f"{name} must be a function{' or None' if optional else ''}, not {value!r}")


_LETTERS = "abcdefghij"


class HiddenAnswer(RuntimeError):
    """An exercise's answer asked for before the student has given it."""


def _wants_rng(scenario: Callable) -> bool:
    """Whether `scenario` takes one argument (the random numbers of per-student problems)
    rather than none; any other signature is refused."""
    try:
        params = inspect.signature(scenario).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called with nothing
        return False
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise ValueError(f"scenario must take no argument, or one (a random.Random), not {len(required)}")
    return bool(required)


class Exercise:
    """A question about a scenario, its answer computed by running ptsim.

    scenario() builds what the question is about (a Machine, or a namespace of machine,
    processes and addresses) and returns it as `state`. Then, in this order:
    prompt(state) (or a plain string) is the task; question(state) returns the answer, and may
    run what it asks about (a fork, an access) to measure it; explain(state, answer) says why;
    diagnose(state, answer, given) says why `given` is wrong (both normalised), or None.

    `key` names the exercise in the book ("4.1"), and makes it one a class is graded on:
    - a scenario that takes an argument, scenario(rng), gets `student_rng(key, student)`: each
      student's own numbers (`student` as `student_id` reads it: a name given, nbgrader's
      submission, the hub's user, or the book's reader), the same every time they are made;
    - its answer is not given away: `answer` and `explain()` wait until `check()` has accepted
      one. An exercise without a key (a quiz problem, whose `-c` prints it) shows them at once.

    `state` is the student's to try things on: the answer is computed, at the first `check()`,
    on a scenario built afresh from the same numbers, so nothing the student does to `state`
    (or to its machine) changes it.
    """

    def __init__(
        self,
        prompt: str | Callable[[Any], str],
        scenario: Callable[..., Any],
        question: Callable[[Any], Any],
        *,
        key: str | None = None,
        student: str | None = None,
        explain: Callable[[Any, Any], str] | None = None,
        diagnose: Callable[[Any, Any, Any], str | None] | None = None,
        choices: tuple[str, ...] | None = None,
        hint: str = "",
        show: Callable[[int], str] = str,
    ):
        if not (isinstance(prompt, str) or callable(prompt)):
            raise ValueError(f"prompt must be a string or a function, not {prompt!r}")
        _callable("scenario", scenario)
        _callable("question", question)
        _callable("explain", explain, optional=True)
        _callable("diagnose", diagnose, optional=True)
        _callable("show", show)
        if not isinstance(hint, str):
            raise ValueError(f"hint must be a string, not {hint!r}")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise ValueError(f"key must be a non-empty string naming the exercise (\"4.1\"), not {key!r}")
        per_student = _wants_rng(scenario)
        if per_student and key is None:
            raise ValueError("key: a scenario that takes random numbers needs the exercise's key, which seeds them")
        if student is not None and not per_student:
            raise ValueError("student: only a scenario that takes random numbers, scenario(rng), differs by student")
        if choices is not None:
            normals = [normal(c) if isinstance(c, str) else None for c in choices]
            if not 2 <= len(normals) <= len(_LETTERS) or None in normals or len(set(normals)) < len(normals):
                raise ValueError(f"choices must be 2 to {len(_LETTERS)} distinct non-empty strings, not {choices!r}")
        self.choices = tuple(choices) if choices is not None else None
        self.key = key
        self.student = student_id(student) if per_student else None
        self.hint, self.show = hint, show
        self._scenario, self._question, self._explain, self._diagnose = scenario, question, explain, diagnose
        self._solved: tuple[Any, Any, str] | None = None  # (state, answer, explanation), once computed
        self.tries = 0
        self.solved = False  # some check() accepted an answer
        self.last: Verdict | None = None  # the last check()'s verdict
        self.state = self._build()
        self.prompt = prompt if isinstance(prompt, str) else prompt(self.state)

    def _build(self):
        return self._scenario(student_rng(self.key, self.student)) if self.student is not None else self._scenario()

    def _solve(self) -> tuple[Any, Any, str]:
        """(state, answer, explanation), computed once, on a scenario of the checker's own;
        for the checker and for tests, not for students (who have `check`)."""
        if self._solved is None:
            state = self._build()
            answer = self._question(state)
            if normal(answer) is None:
                raise ValueError(f"question: returned {answer!r}, which is not an answer (a number, a word, or a list of them)")
            if self.choices is not None and normal(answer) not in [normal(c) for c in self.choices]:
                raise ValueError(f"question: returned {answer!r}, which is not one of the choices {self.choices!r}")
            self._solved = state, answer, self._explain(state, answer) if self._explain is not None else ""
        return self._solved

    @property
    def hidden(self) -> bool:
        """Whether the answer is still withheld: a graded exercise (one with a key) not yet solved."""
        return self.key is not None and not self.solved

    @property
    def answer(self):
        if self.hidden:
            raise HiddenAnswer(f"exercise {self.key}: the answer is yours to find; check(your_answer) says whether it is "
                               "right (and often why not), and answer and explain() give it once check() has accepted yours.")
        return self._solve()[1]

    def __str__(self) -> str:
        if self.choices is None:
            return self.prompt
        return "\n".join([self.prompt] + [f"  ({letter}) {c}" for letter, c in zip(_LETTERS, self.choices)])

    __repr__ = __str__

    def _given(self, given):
        """The student's answer, normalised; a letter stands for its choice."""
        g = normal(given)
        if self.choices is not None and isinstance(g, str) and len(g) == 1 and g in _LETTERS[: len(self.choices)]:
            return normal(self.choices[_LETTERS.index(g)])
        return g

    def check(self, given) -> Verdict:
        self.last = self._verdict(given)
        self.tries += 1
        self.solved = self.solved or self.last.ok
        return self.last

    def _verdict(self, given) -> Verdict:
        state, answer, explanation = self._solve()
        g, right = self._given(given), normal(answer)
        if g is None:
            return Verdict(False, f"Not an answer: {_describe(given)}. Answer with a number (12 or 0xc), a word, or a list of them.")
        shown = _shown(g, self.show)
        if g == right:
            return Verdict(True, f"Right: {shown}.{_after(explanation)}")
        hint = f" Hint: {self.hint}" if self.hint else ""
        reason = self._diagnose(state, right, g) if self._diagnose is not None else None
        if reason is not None:
            return Verdict(False, f"Not {shown}: {reason}")
        if isinstance(right, tuple):  # which items are wrong, and the hint: a list needs both
            return Verdict(False, f"Not {shown}: {_list_mismatch(g, right)}{hint}")
        return Verdict(False, f"Not {shown}.{hint}")

    def explain(self) -> Text:
        """The answer and why (the `-c` of an OSTEP simulator); for a graded exercise, once
        `check()` has accepted an answer."""
        if self.hidden:
            tried = f"{self.tries} answer{'s' if self.tries != 1 else ''} checked, none right yet" if self.tries else "no answer checked yet"
            return Text(f"Exercise {self.key}: explain() gives the answer and why once check() has accepted yours ({tried}).")
        _, answer, explanation = self._solve()
        return Text(f"Answer: {_shown(normal(answer), self.show)}.{_after(explanation)}")


def _after(explanation: str) -> str:
    """An explanation as it follows a sentence: on the same line, or below it."""
    return explanation if not explanation or explanation.startswith("\n") else " " + explanation


def _list_mismatch(given, right: tuple) -> str:
    if not isinstance(given, tuple) or len(given) != len(right):
        return f"give a list of {len(right)} answers, one per item, in order."
    wrong = [str(i) for i, (g, r) in enumerate(zip(given, right), 1) if g != r]
    return f"item{'s' if len(wrong) > 1 else ''} {', '.join(wrong)} {'are' if len(wrong) > 1 else 'is'} not right."


# -- challenges --------------------------------------------------------------------------


class Challenge:
    """Make the machine reach a state: `check(*objects)` passes the student's machine or
    processes to every goal. A goal is a function of those objects that returns (met, text):
    what it found, in words a student can act on."""

    def __init__(self, prompt: str, *goals: Callable[..., tuple[bool, str]]):
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, not {prompt!r}")
        if not goals:
            raise ValueError("goals: a challenge needs at least one goal")
        for goal in goals:
            _callable("goals", goal)
        self.prompt, self.goals = prompt, goals
        self.tries = 0
        self.solved = False  # some check() found every goal met
        self.last: Verdict | None = None  # the last check()'s verdict

    def __str__(self) -> str:
        return self.prompt

    __repr__ = __str__

    def check(self, *given) -> Verdict:
        self.last = self._verdict(*given)
        self.tries += 1
        self.solved = self.solved or self.last.ok
        return self.last

    def _verdict(self, *given) -> Verdict:
        for obj in given:
            if not isinstance(obj, (Machine, Process)):
                return Verdict(False, f"Not an answer: {_describe(obj)}. Pass the ptsim machine or processes you built.")
        machines = {id(_machine(obj)) for obj in given}
        if len(machines) > 1:
            return Verdict(False, "Not yet: these objects belong to different machines; build one machine.")
        for goal in self.goals:
            params = inspect.signature(goal).parameters
            try:
                inspect.signature(goal).bind(*given)
            except TypeError:
                return Verdict(False, f"Not an answer: check takes {len(params)} object(s): {', '.join(params)}.")
        met = []
        try:
            _machine(given[0]).check()
            for goal in self.goals:
                ok, text = goal(*given)
                if not ok:
                    return Verdict(False, f"Not yet: {text}.")
                met.append(text)
        except (InvariantError, ProcessExited) as e:
            return Verdict(False, f"Not yet: {e}.")
        return Verdict(True, "Right: " + "; ".join(met) + ".")


def _machine(obj: Machine | Process) -> Machine:
    return obj if isinstance(obj, Machine) else obj.machine


# -- observing one action -----------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """What one action made the kernel do: the fault kind, the counters that moved, the events."""

    kind: str  # "none", a FAULT_KINDS key, or kinds joined by "+" ("unshare+wp_copy")
    counters: dict[str, int]
    events: list[Event] = field(repr=False)

    def steps(self) -> str:
        """The events as "func action" steps, a repeated step once with its count."""
        steps: list[list] = []
        for e in self.events:
            step = f"{e.func} {e.action}"
            if steps and steps[-1][0] == step:
                steps[-1][1] += 1
            else:
                steps.append([step, 1])
        return ", ".join(s if n == 1 else f"{s} x{n}" for s, n in steps) or "nothing"


def observe(m: Machine, action: Callable[[], Any]) -> Observed:
    """Run `action` (one access, one call) and report what the kernel did, from its counters
    and its event trace: `observe(m, lambda: c.write(a, b"y")).kind == "unshare+wp_copy"`."""
    if not isinstance(m, Machine):
        raise ValueError(f"m must be a ptsim Machine, not {m!r}")
    _callable("action", action)
    before = m.counters
    with m.trace() as events:
        action()
    moved = counters_gained(m, before)
    kinds = ["unshare"] * moved.get("tables_unshared", 0)
    for name in _FAULT_COUNTERS:
        kinds += [name.removeprefix("fault_")] * moved.get(name, 0)
    return Observed("+".join(kinds) or "none", moved, list(events))


# -- goals for challenges ------------------------------------------------------------------


def _not_a_process(obj, role: str) -> tuple[bool, str] | None:
    if isinstance(obj, Process):
        return None
    return False, f"pass {role} as a process, not {type(obj).__name__}"


def _pids(pids) -> str:
    return ", ".join(str(p) for p in pids)


def arch_is(name: str) -> Callable[[Machine | Process], tuple[bool, str]]:
    """Goal: the machine has the geometry `name` (a key of ptsim.ARCHES), as the task asks."""
    if not isinstance(name, str) or name not in ARCHES:
        raise ValueError(f"name must be one of {sorted(ARCHES)}, not {name!r}")

    def goal(machine):
        have = _machine(machine).arch.name
        if have != name:
            return False, f'this machine is {have}, and the task asks for {name}: build it with ptsim.Machine(arch="{name}", ...)'
        return True, f"the machine is {name}"

    return goal


def use_count_is(n: int) -> Callable[[Machine | Process], tuple[bool, str]]:
    """Goal: some page-table page of the machine has use count `n`."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, not {n!r}")

    def goal(machine):
        tables = list_tables(_machine(machine))
        hits = [t for t in tables if t.use_count == n]
        if hits:
            t = hits[0]
            return True, f"the {t.name} table in frame {t.frame:#x} has use count {n}: pids {_pids(t.pids)} reach it"
        top = max(tables, key=lambda t: t.use_count, default=None)
        if top is None:
            return False, "no process is alive, so the machine holds no page tables"
        return False, f"no page-table page has use count {n}; the highest is {top.use_count} (frame {top.frame:#x}, pids {_pids(top.pids)})"

    return goal


def shared_without_parent() -> Callable[[Process, Process, Process], tuple[bool, str]]:
    """Goal: processes `a` and `b` share a last-level table that `parent` does not reach (the
    sibling case of Phillips' mail: the parent has unshared, the children still share).
    `a` and `b` must be two different children of `parent` (`Process.ppid`)."""

    def goal(parent, a, b):
        for obj, role in ((parent, "parent"), (a, "a"), (b, "b")):
            wrong = _not_a_process(obj, role)
            if wrong:
                return wrong
        if len({parent.pid, a.pid, b.pid}) < 3:
            return False, f"pass three different processes (parent, a, b), not pids {parent.pid}, {a.pid}, {b.pid}"
        for child in (a, b):
            if child.ppid != parent.pid:
                forked_by = f"pid {child.ppid}" if child.ppid else "nobody (it was spawned)"
                return False, (f"pid {child.pid} is not a child of pid {parent.pid}: it was forked by {forked_by}; "
                               "fork the two siblings from the parent")
        leaves = [t for t in list_tables(a) if t.level == a.machine.arch.levels - 1 and b.pid in t.pids]
        if not leaves:
            return False, f"pids {a.pid} and {b.pid} share no last-level table"
        for t in leaves:
            if parent.pid not in t.pids:
                return True, f"pids {a.pid} and {b.pid} share the pte table in frame {t.frame:#x} (use count {t.use_count}) and pid {parent.pid} does not"
        return False, f"pid {parent.pid} reaches every table pids {a.pid} and {b.pid} share (frames {', '.join(hex(t.frame) for t in leaves)})"

    return goal


def status_is(name: str, kb: int) -> Callable[[Process], tuple[bool, str]]:
    """Goal: `process.status()[name]` is `kb` (VmSize, VmRSS, VmPTE or VmSwap, in kB)."""
    if name not in ("VmSize", "VmRSS", "VmPTE", "VmSwap"):
        raise ValueError(f"name must be VmSize, VmRSS, VmPTE or VmSwap, not {name!r}")
    if not isinstance(kb, int) or isinstance(kb, bool) or kb < 0:
        raise ValueError(f"kb must be a non-negative int, not {kb!r}")

    def goal(process):
        wrong = _not_a_process(process, "the process")
        if wrong:
            return wrong
        have = process.status()[name]
        return have == kb, f"pid {process.pid} has {name} {have} kB" + ("" if have == kb else f", not {kb} kB")

    return goal
