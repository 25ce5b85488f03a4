"""The lab: grade a fork policy that a student wrote, as a CopyPolicy subclass.

    result = ptsim.lab.check(MyPolicy())      # the rules, the oracle, random machines
    result.ok, result.rule, result.calls      # the verdict, the rule broken, the shortest failure
    print(result); result.figure()            # what failed and how to replay it; the tables
    ptsim.lab.replay(result.calls, MyPolicy())

`check` runs, within a time budget:

1. one scenario per rule of notebooks/rules-of-sharing.md that a sharing policy must keep
   (RULES below), written in the scenario format of ptsim.host.scenario with two kinds of lines
   of the lab's own: `pN swap_out ADDR` (Machine.swap_out) and `expect ...`, which reads the
   machine after the call before it (EXPECTS: use counts, tables, entries, the TLB, counters);
2. random machines: random calls (mmap, munmap, mprotect, read, write, fork, exit, swap_out)
   over a few processes, near a table boundary.

Every call of both is also played on the oracle (ptsim.checking.oracle), which knows no tables:
each read, write, SIGSEGV and refused call must agree with it, and so must which (process,
page) pairs share one page; and `Machine.check()` recounts everything after every call. A
failure is shrunk by delta debugging (lines dropped while it still fails the same way) to the
scenario `result.calls` holds. The student's code runs under a time limit per scenario; an
exception it raises, a return value that is not the table it must return, or an endless loop
is reported with the line of the student's code it came from, never raised.

Rules 18 (fork then exec) and 19 (upper tables never shared) have no scenario here: the
scenario format has no exec, and no policy method can share an upper table.
"""

from __future__ import annotations

import linecache
import random
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from .checking.oracle import Oracle
from .errors import InvariantError, SegmentationFault
from .hardware.arch import _PAGE_RW
from .host import scenario as sc
from .kernel.fork import CopyPolicy, SharedPolicy, UpperWrprotectPolicy
from .kernel.page import PG_PGTABLE
from .machine import Machine

RAM = 8 << 20  # 2048 frames: the rule scenarios and random machines use a few dozen
R = sc.REGION_START
PAGE = sc.PAGE
SPAN = 512 * PAGE  # what one last-level table of x86_64 maps


def _at(offset: int) -> str:
    return f"{R + offset:#x}"


A, B, C = _at(0), _at(PAGE), _at(2 * PAGE)  # the first pages of a table
EDGE = _at(SPAN - PAGE)  # the last page of the first table; the next table starts at _at(SPAN)

# One scenario per rule: (title, lines). Each keeps to the calls the rule needs, so that a step
# of the lab notebook can check its change alone (rules 1, 2, 3, 8 need only fork's change;
# 4-7, 12, 13, 15-17 also handle_mm_fault's; 9-11, 14 also zap_page_range's).
RULES: dict[int, tuple[str, str]] = {
    1: ("Use count", f"""
p0 mmap {EDGE} 8K rw private
p0 write {EDGE} "left"
p0 write {_at(SPAN)} "right"
p0 fork p1
expect same_table p0 p1 {EDGE}
expect use_count p0 {EDGE} 2
expect use_count p0 {_at(SPAN)} 2
p1 fork p2
expect use_count p2 {_at(SPAN)} 3
"""),
    2: ("No write through a shared table", f"""
p0 mmap {A} 16K rw private
p0 write {A} "parent"
p0 mmap {C} 4K rw shared
p0 write {C} "shmem"
p0 fork p1
expect same_table p0 p1 {A}
expect readonly p0 {A}
expect readonly p1 {A}
p1 read {A} 6
"""),
    3: ("Reads are free", f"""
p0 mmap {A} 16K rw private
p0 write {A} "tag"
p0 fork p1
p1 read {A} 3
expect gained minflt 0
expect table_kept p1 {A}
expect same_table p0 p1 {A}
"""),
    4: ("Unshare", f"""
p0 mmap {A} 16K rw private
p0 write {A} "one"
p0 write {B} "two"
p0 fork p1
p0 write {A} "new"
expect own_table p0 p1 {A}
expect use_count p0 {A} 1
expect use_count p1 {A} 1
expect gained pages_copied 1
p1 read {A} 3
p1 read {B} 3
p0 read {B} 3
"""),
    5: ("Read faults: fill, or unshare", f"""
p0 mmap {A} 16K rw private
p0 write {A} "x"
p0 fork p1
p1 read {B} 8
expect gained fault_zero 1
p0 read {B} 8
p1 write {B} "child"
p0 read {B} 8
"""),
    6: ("The last sharer reuses", f"""
p0 mmap {A} 16K rw private
p0 write {A} "one"
p0 write {B} "two"
p0 fork p1
p0 write {A} "parent"
p1 write {B} "child"
expect table_kept p1 {B}
expect use_count p1 {B} 1
expect gained pages_copied 1
"""),
    7: ("Nobody owns a table", f"""
p0 mmap {A} 16K rw private
p0 write {A} "orig"
p0 fork p1
p0 fork p2
p0 write {A} "mine"
expect same_table p1 p2 {A}
expect own_table p0 p1 {A}
expect use_count p1 {A} 2
p1 write {A} "p1's"
p2 write {A} "p2's"
expect gained pages_reused 1
p2 read {A} 4
"""),
    8: ("Re-fork", f"""
p0 mmap {A} 16K rw private
p0 write {A} "tag"
p0 fork p1
p1 fork p2
expect same_table p0 p2 {A}
expect use_count p0 {A} 3
expect gained frames 3
p2 read {A} 3
"""),
    9: ("Only the last frees", f"""
p0 mmap {A} 16K rw private
p0 write {A} "one"
p0 write {B} "two"
p0 fork p1
p0 fork p2
p1 exit
expect use_count p0 {A} 2
expect gained pages_freed 0
p0 exit
expect use_count p2 {A} 1
expect gained pages_freed 0
p2 read {B} 3
p2 exit
expect gained pages_freed 2
"""),
    10: ("Whole-table zap", f"""
p0 mmap {A} 2M rw private
p0 write {A} "tag"
p0 fork p1
p0 read {A} 3
p1 munmap {A} 2M
expect use_count p0 {A} 1
expect gained pages_freed 0
expect table_kept p0 {A}
p0 read {A} 3
"""),
    11: ("Partial changes unshare", f"""
p0 mmap {A} 16K rw private
p0 write {A} "one"
p0 write {B} "two"
p0 fork p1
p0 munmap {A} 4K
expect own_table p0 p1 {B}
p1 read {A} 3
p1 fork p2
p1 mprotect {B} 4K r
expect own_table p1 p2 {B}
p2 write {B} "new"
p1 read {B} 3
"""),
    12: ("Per table, not per VMA", f"""
p0 mmap {A} 8K rw private
p0 mmap {C} 8K rw shared
p0 write {A} "private"
p0 write {C} "shared"
p0 fork p1
p0 write {A} "mine"
expect own_table p0 p1 {A}
p0 read {C} 6
expect gained minflt 0
p1 write {C} "SHARED"
p0 read {C} 6
"""),
    13: ("MAP_SHARED is not copy-on-write", f"""
p0 mmap {A} 8K rw shared
p0 write {A} "before"
p0 fork p1
p1 write {A} "child!"
expect gained pages_copied 0
p0 read {A} 6
p1 write {B} "fault"
expect gained pages_copied 0
expect own_table p0 p1 {B}
p0 read {B} 5
"""),
    14: ("Reclaim flushes every sharer", f"""
p0 mmap {A} 8K rw private
p0 write {A} "swap me"
p0 fork p1
p1 read {A} 7
p0 read {A} 7
p0 swap_out {A}
p1 read {A} 7
p0 write {A} "back"
p1 read {A} 7
"""),
    15: ("The zero page", f"""
p0 mmap {A} 8K rw private
p0 read {A} 8
expect gained fault_zero 1
p0 fork p1
p1 write {A} "w"
expect gained pages_allocated 1
p0 read {A} 8
"""),
    16: ("Reuse still faults", f"""
p0 mmap {A} 8K rw private
p0 write {A} "old"
p0 fork p1
p1 write {A} "copy"
p0 write {A} "new"
expect gained fault_wp_reuse 1
expect gained pages_copied 0
expect gained minflt 1
"""),
    17: ("TLB flushes", f"""
p0 mmap {A} 8K rw private
p0 write {A} "a"
p0 write {B} "b"
p0 fork p1
p0 read {B} 1
p0 write {A} "c"
expect tlb_empty p0 {B}
"""),
}

# Correct sharing policies: every rule scenario passes on each, and so must a shrunk scenario
# that fails an expect line (dropping lines can make an expectation false for any policy).
REFERENCES = (SharedPolicy(), SharedPolicy(read_fault="unshare"), UpperWrprotectPolicy())

# What each `expect` line asks, and how many arguments it takes.
EXPECTS = {
    "same_table": "pA pB ADDR: the two processes reach one last-level table for ADDR",
    "own_table": "pA pB ADDR: they reach different tables for ADDR",
    "use_count": "pN ADDR N: the table pN reaches for ADDR has use count N",
    "table_kept": "pN ADDR: pN reaches the same table for ADDR as before the call above",
    "readonly": "pN ADDR: no write to ADDR can get through pN's entries (entry or upper entry read-only)",
    "tlb_empty": "pN ADDR: pN's TLB holds no translation of ADDR",
    "gained": "NAME N: the call above gained N of counter NAME, of `minflt` (its process's faults) or of `frames` (taken)",
}
_ARITY = {"same_table": 3, "own_table": 3, "use_count": 3, "table_kept": 2, "readonly": 2, "tlb_empty": 2, "gained": 2}

# The invariant checker's findings, by the rule they break (the first pattern found wins).
CHECKER_RULES = (
    ("upper entries point at it", 1),
    ("hidden shared segment", 2),
    ("TLB", 17),
    ("table_rss", 4),
    ("rss and swapents", 4),
    ("pgtables_bytes", 10),
    ("leaked", 9),
    ("free frames", 9),
    ("anon page", 4),
    ("shmem page", 4),
    ("anon_exclusive", 4),
    ("swap", 4),
    ("outside every VMA", 11),
    ("VMA", 11),
)


def checker_rule(message: str) -> int | None:
    """The rule an InvariantError's message says is broken, where one applies."""
    return next((rule for pattern, rule in CHECKER_RULES if pattern in message), None)


# -- time limit ------------------------------------------------------------------------------


class TimeLimit(BaseException):
    """A scenario ran out of time. A BaseException, so that no `except Exception` swallows it."""


@contextmanager
def _time_limit(seconds: float):
    """Raise TimeLimit in the code running here after `seconds`: by SIGALRM in the main thread
    (a script, pytest, a Jupyter kernel), else by a trace function checking the clock."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum, frame):
            raise TimeLimit

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        return
    deadline = time.monotonic() + seconds

    def tracer(frame, event, arg):
        if time.monotonic() > deadline:
            raise TimeLimit
        return tracer

    old_trace = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(old_trace)


# -- the student's code ----------------------------------------------------------------------


class BadReturn(Exception):
    """A policy method returned something that is not the table it must return. `a_table`:
    it returned a frame number, only not the right one (a bug of the rule at hand, where a
    value of another type is a slip of programming)."""

    def __init__(self, message: str, a_table: bool):
        super().__init__(message)
        self.a_table = a_table


_RETURNING = ("prepare_pte_write", "prepare_pte_fill", "unshare")  # each returns the slot's table now


def _checked(policy: CopyPolicy) -> CopyPolicy:
    """`policy` with every table-returning method checked: the same object's state, in a
    subclass whose methods call the student's and hold the value returned to its contract."""
    cls = type(policy)

    def wrap(name):
        def method(self, k, mm, *args):
            got = getattr(super(checked, self), name)(k, mm, *args)
            slot = args[1] if name == "prepare_pte_fill" else args[0]  # prepare_pte_fill(k, mm, vma, slot, ...)
            want = k.slot_table(slot)
            ok = isinstance(got, (int, np.integer)) and not isinstance(got, bool) and want is not None and int(got) == want
            if not ok:
                a_table = isinstance(got, (int, np.integer)) and not isinstance(got, bool)
                shown = repr(got) if isinstance(got, (int, np.integer, type(None), bool, str)) else f"a {type(got).__name__}"
                raise BadReturn(f"{cls.__name__}.{name} returned {shown}; it must return the frame of the table "
                                f"the upper entry now points at ({want})", a_table)
            if k.mem_map.kind[want] != PG_PGTABLE:
                raise BadReturn(f"{cls.__name__}.{name} left the upper entry pointing at frame {want}, which is no page table", True)
            return int(got)

        method.__name__ = method.__qualname__ = name
        return method

    checked = type(cls.__name__, (cls,), {name: wrap(name) for name in _RETURNING} | {"_lab_checked": True})
    checked.__qualname__ = cls.__qualname__
    copy = cls.__new__(checked)
    if hasattr(policy, "__dict__"):
        copy.__dict__.update(policy.__dict__)
    return copy


def _policy_codes(policy: CopyPolicy) -> set:
    """The code objects of the policy's own methods: those not in ptsim's kernel."""
    codes = set()
    for klass in type(policy).__mro__:
        if klass.__module__.startswith("ptsim.kernel") or "_lab_checked" in vars(klass) or klass is object:
            continue
        for value in vars(klass).values():
            func = getattr(value, "__func__", value)
            code = getattr(func, "__code__", None)
            if code is not None:
                codes.add(code)
    return codes


def _where(error: BaseException, codes: set) -> str:
    """The last frame of the traceback in the policy's own code, as "Class.method, line N: source"."""
    frames = [f for f in traceback.walk_tb(error.__traceback__)]
    mine = [(frame, line) for frame, line in frames if frame.f_code in codes]
    if not mine:
        frame, line = frames[-1] if frames else (None, 0)
        if frame is None:
            return ""
        return f"in ptsim's {frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}, line {line}), called from your policy's methods"
    frame, line = mine[-1]
    owner = frame.f_locals.get("self")
    name = f"{type(owner).__name__}.{frame.f_code.co_name}" if owner is not None else frame.f_code.co_name
    source = linecache.getline(frame.f_code.co_filename, line).strip()
    return f"in {name}, line {line}" + (f": {source}" if source else "")


# -- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    text: str  # the line as written (stripped of comments)
    op: str  # a scenario op, "swap_out" or "expect"
    call: sc.Call | None = None
    process: str | None = None
    args: tuple = ()


def parse(lines) -> list[Step]:
    """Lab lines (a string or a list of lines) as Steps; a ValueError names the bad line."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    live, used, steps = {"p0"}, {"p0"}, []
    for number, line in enumerate(lines, 1):
        if not isinstance(line, str):
            raise ValueError(f"line {number}: {line!r} is not a string")
        text = line.split("#", 1)[0].strip()  # a lab line's comment (scenario lines: the parser's)
        tokens = text.split()
        if not tokens:
            continue
        try:
            if tokens[0] == "expect":
                steps.append(_parse_expect(text, tokens[1:], live))
            elif len(tokens) > 1 and tokens[1] == "swap_out":
                if len(tokens) != 3:
                    raise ValueError("swap_out takes 1 argument(s), the address")
                if tokens[0] not in live:
                    raise ValueError(f"process {tokens[0]} is not alive")
                addr = sc.parse_number(tokens[2], "address")
                sc.check_in_region(addr, 1)
                steps.append(Step(text, "swap_out", process=tokens[0], args=(addr,)))
            else:
                call = sc.parse_line(number, line, live, used)
                if call is not None and call.op != "observe":
                    steps.append(Step(str(call), call.op, call=call, process=call.process))
        except ValueError as e:
            raise ValueError(f"line {number}: {e}: {line.strip()!r}") from None
    return steps


def _parse_expect(text: str, args: list[str], live: set[str]) -> Step:
    if not args or args[0] not in EXPECTS:
        raise ValueError(f"expect what? one of {', '.join(EXPECTS)}")
    kind, rest = args[0], args[1:]
    if len(rest) != _ARITY[kind]:
        raise ValueError(f"expect {kind} takes {EXPECTS[kind]}")
    if kind == "gained":
        return Step(text, "expect", args=(kind, rest[0], sc.parse_number(rest[1], "count")))
    names = rest[:2] if kind in ("same_table", "own_table") else rest[:1]
    for name in names:
        if name not in live:
            raise ValueError(f"process {name} is not alive")
    values = rest[len(names):]
    addr = sc.parse_number(values[0], "address")
    return Step(text, "expect", args=(kind, *names, addr, *(sc.parse_number(v, "count") for v in values[1:])))


# -- playing ---------------------------------------------------------------------------------


@dataclass
class Failure:
    kind: str  # "checker", "oracle", "expect", "exception", "unwritten", "return", "bad type", "timeout"
    message: str
    line: int  # index into the steps of the failing one
    where: str = ""  # the policy's line that raised, for "exception" and "unwritten"
    rule: int | None = None

    def signature(self):
        """What must stay the same while shrinking."""
        if self.kind == "checker":
            return (self.kind, checker_rule(self.message), self.message.split(":")[0].split()[0])
        if self.kind == "expect":
            return (self.kind, self.message.split(":")[0])
        if self.kind in ("exception", "unwritten", "bad type"):
            return (self.kind, self.message.split(":")[0], self.where.split(",")[0])
        return (self.kind,)


class _Mismatch(Exception):
    pass


class _Player:
    def __init__(self, policy: CopyPolicy):
        self.policy = policy
        self.m = Machine(arch="x86_64", policy=policy, ram=RAM)
        a = self.m.arch
        self.oracle = Oracle(a.page_size, a.task_size, a.mmap_min_addr, a.thp_mmap_align)
        self.procs = {"p0": (self.m.spawn(), self.oracle.spawn())}
        self.touched: set[int] = set()  # vpns some access or swap-out named
        # vpns once swapped out: ptsim has no swap cache, so two processes that read one swap
        # entry back get two frames, where the oracle (no swap at all) has one page
        self.swapped: set[int] = set()
        self.before = None  # (counters, free frames, minflt of the call's process, leaf tables)
        self.last_process = None

    # the state an expect reads
    def leaf(self, name: str, addr: int):
        p = self.procs[name][0]
        slot = self.m.kernel.pmd_slot(p._task.mm, addr)
        return None if slot is None else self.m.kernel.slot_table(slot)

    def _leaves(self):
        return {(name, vpn): self.leaf(name, vpn * PAGE) for name in self.procs for vpn in self.touched}

    def play(self, step: Step) -> None:
        if step.op == "expect":
            self.expect(*step.args)
            return
        for vpn in self._vpns(step):
            self.touched.add(vpn)
        p, o = self.procs[step.process]
        self.before = (self.m.counters, self.m.free_frames, p.minflt, self._leaves())
        self.last_process = step.process
        if step.op == "swap_out":
            self.swapped.add(step.args[0] // PAGE)
            self.m.swap_out(p, step.args[0])
        elif step.op == "fork":
            child = p.fork()
            self.procs[step.call.child] = (child, self.oracle.fork(o))
            self.before = (*self.before[:3], {**self.before[3], **{(step.call.child, v): None for v in self.touched}})
        elif step.op == "exit":
            p.exit()
            self.oracle.exit(o)
            del self.procs[step.process]
        elif step.op in ("read", "write"):
            self._access(p, o, step.call)
        else:
            c = step.call
            kernel = {"mmap": lambda: p.mmap(c.addr, c.length, c.prot, c.shared), "munmap": lambda: p.munmap(c.addr, c.length),
                      "mprotect": lambda: p.mprotect(c.addr, c.length, c.prot)}[c.op]
            oracle = {"mmap": lambda: self.oracle.mmap(o, c.addr, c.length, c.prot, c.shared),
                      "munmap": lambda: self.oracle.munmap(o, c.addr, c.length),
                      "mprotect": lambda: self.oracle.mprotect(o, c.addr, c.length, c.prot)}[c.op]
            self._same(self._outcome(kernel), self._outcome(oracle), step)

    def _vpns(self, step: Step):
        if step.op == "swap_out":
            return [step.args[0] // PAGE]
        if step.op in ("read", "write"):
            return range(step.call.addr // PAGE, -(-(step.call.addr + step.call.length) // PAGE))
        return []

    def _outcome(self, call):
        codes = _policy_codes(self.policy)
        try:
            return ("ok", call())
        except SegmentationFault as e:
            return ("SIGSEGV", e.address)
        except ValueError as e:
            if any(frame.f_code in codes for frame, _ in traceback.walk_tb(e.__traceback__)):
                raise  # the student's ValueError, not a refused call
            return ("refused", None)

    def _same(self, kernel, oracle, step: Step) -> None:
        if kernel != oracle:
            raise _Mismatch(f"ptsim {_said(kernel)}, the oracle {_said(oracle)}")

    def _access(self, p, o, call: sc.Call) -> None:
        payload = call.payload() if call.op == "write" else b""
        for lo, n in sc.page_parts(call.addr, call.length):
            if call.op == "read":
                kernel = self._outcome(lambda: p.read(lo, n))
                oracle = self._outcome(lambda: self.oracle.read(o, lo, n))
            else:
                data = payload[lo - call.addr : lo - call.addr + n]
                kernel = self._outcome(lambda: p.write(lo, data))
                oracle = self._outcome(lambda: self.oracle.write(o, lo, data))
            if kernel != oracle:
                raise _Mismatch(f"at {lo:#x}: ptsim {_said(kernel)}, the oracle {_said(oracle)}")
            if kernel[0] != "ok":
                return

    def same_sharing(self) -> None:
        """Two (process, page) pairs map one page in ptsim exactly when they do in the oracle."""
        forward, backward = {}, {}
        for name, (p, o) in self.procs.items():
            for vpn in sorted(self.touched - self.swapped):
                pa = p.translate(vpn * PAGE)
                mine = self.oracle.page_of(o, vpn)
                if pa is None or mine is None:
                    continue
                frame = pa // PAGE
                if forward.setdefault(frame, mine) != mine or backward.setdefault(mine, frame) != frame:
                    raise _Mismatch(f"{name} at {vpn * PAGE:#x} shares frame {frame} with pages the oracle keeps apart, or the other way round")

    def expect(self, kind, *args) -> None:
        k = self.m.kernel
        if kind == "gained":
            name, n = args
            if self.before is None:
                raise AssertionError("no call before it")
            counters, free, minflt, _ = self.before
            if name == "minflt":
                proc = self.procs.get(self.last_process)
                got = proc[0].minflt - minflt if proc else 0
            elif name == "frames":
                got = free - self.m.free_frames
            else:
                got = self.m.counters.get(name, 0) - counters.get(name, 0)
            if got != n:
                raise AssertionError(f"gained {got}, not {n}")
            return
        if kind in ("same_table", "own_table"):
            a, b, addr = args
            ta, tb = self.leaf(a, addr), self.leaf(b, addr)
            if (ta == tb) != (kind == "same_table") or ta is None:
                raise AssertionError(f"{a} reaches table {ta}, {b} table {tb}")
            return
        name, addr, *rest = args
        p = self.procs[name][0]
        if kind == "use_count":
            table = self.leaf(name, addr)
            got = None if table is None else int(k.mem_map.refcount[table])
            if got != rest[0]:
                raise AssertionError(f"table {table}'s use count is {got}")
        elif kind == "table_kept":
            before = self.before[3].get((name, addr // PAGE)) if self.before else None
            now = self.leaf(name, addr)
            if before is None or before != now:
                raise AssertionError(f"{name} reached table {before} before the call and reaches {now} after it")
        elif kind == "readonly":
            slot = k.pmd_slot(p._task.mm, addr)
            entry = k.follow_pte(p._task.mm, addr)
            if slot is not None and entry & _PAGE_RW and k.entry(*slot) & _PAGE_RW:
                raise AssertionError(f"the entry {entry:#x} and its upper entry both allow writes")
        elif kind == "tlb_empty":
            if (p._task.mm.pcid, addr // PAGE) in k.tlb.entries:
                raise AssertionError("the TLB still holds it")


def _said(outcome) -> str:
    kind, value = outcome
    if kind == "ok":
        return "did it" if value is None or isinstance(value, int) else f"read {value!r}"
    if kind == "SIGSEGV":
        return f"raised SIGSEGV at {value:#x}"
    return "refused the call (ValueError)"


def run(steps: list[Step], policy: CopyPolicy, limit: float) -> tuple[Failure | None, int]:
    """Play `steps` on a fresh machine; the first failure (or None) and how many steps ran."""
    checked = _checked(policy)
    codes = _policy_codes(checked)
    done = 0
    try:
        with _time_limit(limit):
            player = _Player(checked)
            for i, step in enumerate(steps):
                done = i
                try:
                    player.play(step)
                    if step.op != "expect":
                        player.m.check()
                        player.same_sharing()
                except InvariantError as e:
                    return Failure("checker", str(e), i, rule=checker_rule(str(e))), i + 1
                except _Mismatch as e:
                    return Failure("oracle", str(e), i), i + 1
                except AssertionError as e:
                    if step.op == "expect":
                        return Failure("expect", f"{step.text}: {e}", i), i + 1
                    return Failure("exception", f"{type(e).__name__}: {e}", i, _where(e, codes)), i + 1
                except BadReturn as e:
                    return Failure("return" if e.a_table else "bad type", str(e), i), i + 1
                except NotImplementedError as e:
                    return Failure("unwritten", f"NotImplementedError: {e}", i, _where(e, codes)), i + 1
                except TimeLimit:
                    raise
                except Exception as e:  # the student's, or the kernel's on the student's state
                    return Failure("exception", f"{type(e).__name__}: {e}", i, _where(e, codes)), i + 1
    except TimeLimit:
        return Failure("timeout", f"the scenario did not finish within {limit:g} s (an endless loop?)", done), done + 1
    return None, len(steps)


# -- random machines --------------------------------------------------------------------------

WINDOW = 12  # pages either side of the table boundary at R + SPAN


def random_lines(seed: int, calls: int = 25) -> list[str]:
    """A random scenario of `calls` lines near a table boundary; the same for the same seed."""
    rng = random.Random(seed)
    base = R + SPAN - WINDOW * PAGE
    live, next_name, lines = ["p0"], 1, []
    maps: dict[str, set[int]] = {"p0": set()}

    def addr(page):
        return f"{base + page * PAGE:#x}"

    def mmap(proc, first, n, prot, shared):
        n = min(n, 2 * WINDOW - first)
        lines.append(f"{proc} mmap {addr(first)} {n * 4}K {prot} {'shared' if shared else 'private'}")
        maps[proc] |= set(range(first, first + n))

    mmap("p0", rng.randrange(0, WINDOW - 2), rng.randint(4, WINDOW + 4), "rw", False)
    if rng.random() < 0.6:
        mmap("p0", rng.randrange(WINDOW, 2 * WINDOW - 2), rng.randint(1, 4), "rw", True)
    while len(lines) < calls:
        proc = rng.choice(live)
        page = rng.choice(sorted(maps[proc])) if maps[proc] and rng.random() < 0.85 else rng.randrange(2 * WINDOW)
        op = rng.choices(["write", "read", "fork", "exit", "munmap", "mprotect", "mmap", "swap_out"],
                         [30, 20, 12, 5, 6, 8, 6, 8])[0]
        if op == "write":
            text = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 6)))
            lines.append(f'{proc} write {addr(page)} "{text}"' if rng.random() < 0.8 else f"{proc} write {addr(page)} 0x{rng.randrange(256):02x}*8K")
        elif op == "read":
            lines.append(f"{proc} read {addr(page)} {rng.choice([1, 8, 5000])}")
        elif op == "fork" and len(live) < 4:
            child = f"p{next_name}"
            next_name += 1
            lines.append(f"{proc} fork {child}")
            live.append(child)
            maps[child] = set(maps[proc])
        elif op == "exit" and len(live) > 1:
            lines.append(f"{proc} exit")
            live.remove(proc)
        elif op == "munmap":
            n = rng.choice([1, 2, 5])
            lines.append(f"{proc} munmap {addr(page)} {n * 4}K")
            maps[proc] -= set(range(page, page + n))
        elif op == "mprotect":
            lines.append(f"{proc} mprotect {addr(page)} 4K {rng.choice(['r', 'rw', 'none'])}")
        elif op == "mmap":
            mmap(proc, page, rng.choice([1, 3, 6]), rng.choice(["rw", "rw", "r"]), rng.random() < 0.4)
        elif op == "swap_out":
            lines.append(f"{proc} swap_out {addr(page)}")
    return lines


# -- shrinking -------------------------------------------------------------------------------


def shrink(lines: list[str], policy: CopyPolicy, failure: Failure, limit: float, deadline: float) -> tuple[list[str], int]:
    """Delta debugging (Zeller's ddmin) on lines: the shortest subsequence found that still
    fails the same way; and how many candidates were played."""
    signature, tried = failure.signature(), 0

    def fails(candidate: list[str]) -> bool:
        nonlocal tried
        tried += 1
        try:
            steps = parse(candidate)
        except ValueError:
            return False  # a line names a process no longer forked
        found, _ = run(steps, policy, limit)
        if found is None or found.signature() != signature:
            return False
        # An expect line means something only where the correct policies keep it.
        return failure.kind != "expect" or all(run(steps, good, limit)[0] is None for good in REFERENCES)

    n = 2
    while len(lines) >= 2 and time.monotonic() < deadline:
        size = -(-len(lines) // n)
        chunks = [lines[i : i + size] for i in range(0, len(lines), size)]
        for i in range(len(chunks)):
            complement = [line for j, chunk in enumerate(chunks) if j != i for line in chunk]
            if time.monotonic() < deadline and fails(complement):
                lines, n = complement, max(n - 1, 2)
                break
        else:
            if n >= len(lines):
                break
            n = min(2 * n, len(lines))
    return lines, tried


# -- the result -------------------------------------------------------------------------------


@dataclass
class Result:
    """What `check` found. `ok`; `calls`, the shortest failing scenario (lab lines); `rule`,
    the rule of notebooks/rules-of-sharing.md it breaks, where one applies; `failure`."""

    policy: CopyPolicy
    ok: bool
    calls: list[str] = field(default_factory=list)
    rule: int | None = None
    failure: Failure | None = None
    found_by: str = ""  # "the rule 4 scenario", "random machine 17"
    ran: dict = field(default_factory=dict)  # rule scenarios, machines, calls, shrink candidates
    original_length: int = 0
    sharing: bool = True
    stopped: bool = False  # the time budget ran out before everything ran
    withheld: int | None = None  # a find-the-bug kernel's rule, kept out of `rule` and the report
    seconds: float = 0.0  # wall-clock time (not in the report: it varies)

    def __str__(self) -> str:
        ran = self.ran
        did = (f"{ran.get('rules', 0)} rule scenario(s), {ran.get('machines', 0)} random machine(s), "
               f"{ran.get('calls', 0)} calls, each compared with the oracle and checked by Machine.check()")
        if self.ok:
            text = [f"PASSED: {type(self.policy).__name__} kept every rule tested. Ran {did}."]
            if not self.sharing:
                text.append("It shares no table (its copy_pte_tables is classic fork's), so no rule scenario "
                            "applies: only the oracle and the random machines judged it.")
            if self.stopped:
                text.append("The time budget ran out before all of it ran.")
            return "\n".join(text)
        f = self.failure
        if self.withheld is not None:
            rule = "a rule is broken (which one, and where, is yours to find: this is a find-the-bug kernel)"
        else:
            rule = f"rule {self.rule} ({RULES[self.rule][0]})" if self.rule in RULES else {
                "unwritten": "a method is not written yet", "exception": "the policy raised an exception",
                "bad type": "a method returned a value of the wrong type", "timeout": "out of time",
            }.get(f.kind, "no rule in particular")
        what = {"checker": "Machine.check() found", "oracle": "the oracle disagrees:", "expect": "the rule's expectation failed:",
                "exception": "your policy raised", "unwritten": "a method is not written yet:",
                "return": "your policy returned the wrong table:", "bad type": "your policy returned a wrong value:",
                "timeout": "time ran out:"}[f.kind]
        text = [f"FAILED: {rule}, found by {self.found_by}.",
                f"At line {f.line + 1} ({self.calls[f.line] if f.line < len(self.calls) else '?'}), {what}",
                f"  {f.message}"]
        if f.where:
            text.append(f"  {f.where}")
        shrunk = f" (shrunk from {self.original_length})" if self.original_length > len(self.calls) else ""
        text.append(f"The shortest failing scenario found, {len(self.calls)} lines{shrunk}:")
        text += [f"  {line}" for line in self.calls]
        text.append("Replay it: ptsim.lab.replay(result.calls, policy); see the tables: result.figure()")
        if self.withheld is not None:  # how many rule scenarios ran would tell the rule
            did = f"{ran.get('rules', 0) + ran.get('machines', 0)} scenario(s), {ran.get('calls', 0)} calls"
        text.append(f"Ran {did}.")
        return "\n".join(text)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def replay(self) -> Result:
        return replay(self.calls, self.policy)

    def figure(self, **kw):
        """The page tables at the failing step (highlighting what that step did), drawn by
        ptsim.draw.page_tables; when the step broke the machine beyond drawing, the tables just
        before it. None if everything passed."""
        if self.ok:
            return None
        from .draw import page_tables

        steps = parse(self.calls)
        line = self.failure.line
        # The call to draw: the failing line, or for a failed expect the call it reads.
        call = max((i for i in range(line + 1) if steps[i].op != "expect"), default=line)
        title = f"After line {call + 1}: {self.calls[call]}" + (f" (line {line + 1} fails)" if call != line else "")
        player, events = _Player(_checked(self.policy)), []
        try:
            with _time_limit(5):
                for step in steps[:call]:  # they ran before the failing line did
                    player.play(step)
            with _time_limit(5), player.m.trace() as events:
                player.play(steps[call])
        except (Exception, TimeLimit):
            pass  # the failing line's failure, already reported
        processes = [p for p, _ in player.procs.values()]
        try:
            return page_tables(player.m, processes, highlight=list(events), title=title, **kw)
        except Exception:  # the line left the tables beyond drawing: draw them as they were before it
            before = _Player(_checked(self.policy))
            with _time_limit(5):
                for step in steps[:call]:
                    before.play(step)
            return page_tables(before.m, [p for p, _ in before.procs.values()],
                               title=f"Before line {call + 1}: {self.calls[call]}", **kw)


def _is_sharing(policy: CopyPolicy) -> bool:
    return type(policy).copy_pte_tables is not CopyPolicy.copy_pte_tables


def _validate(policy, seconds, limit) -> None:
    if not isinstance(policy, CopyPolicy):
        raise ValueError(f"policy must be an instance of a CopyPolicy subclass (ptsim.kernel.CopyPolicy), not {policy!r}")
    for name, value in (("seconds", seconds), ("limit", limit)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def check(policy: CopyPolicy, *, seconds: float = 60, seed: int = 0, only=None, machines: int | None = None,
          limit: float = 2.0, shrink_failures: bool = True) -> Result:
    """Grade `policy`: the rule scenarios (`only`: a list of rule numbers, else every one in
    RULES), then `machines` random machines (default 100, or 0 when `only` is given), each of
    25 calls seeded from `seed`; each scenario within `limit` seconds, all within `seconds`."""
    _validate(policy, seconds, limit)
    rules = sorted(RULES) if only is None else list(only)
    bad = [r for r in rules if r not in RULES]
    if bad:
        raise ValueError(f"only: rules {bad} have no scenario; the lab has scenarios for rules {sorted(RULES)}")
    if machines is None:
        machines = 100 if only is None else 0
    if not isinstance(machines, int) or isinstance(machines, bool) or machines < 0:
        raise ValueError(f"machines must be a non-negative int, not {machines!r}")
    if not machines and not (rules if _is_sharing(policy) else []):
        raise ValueError("nothing to run: name some rules in only, or ask for machines")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, not {seed!r}")
    start = time.monotonic()
    deadline = start + seconds
    sharing = _is_sharing(policy)
    ran = {"rules": 0, "machines": 0, "calls": 0, "shrink_candidates": 0}
    jobs = [(f"the rule {r} scenario", r, RULES[r][1].strip().splitlines()) for r in (rules if sharing else [])]
    jobs += [(f"random machine {i} (seed {seed}, number {i})", None, random_lines(seed * 1_000_003 + i)) for i in range(machines)]
    stopped = False
    for name, rule, lines in jobs:
        if time.monotonic() >= deadline:
            stopped = True
            break
        steps = parse(lines)
        failure, played = run(steps, policy, min(limit, max(deadline - time.monotonic(), 0.01)))
        ran["rules" if rule else "machines"] += 1
        ran["calls"] += sum(1 for s in steps[:played] if s.op != "expect")
        if failure is None:
            continue
        # In a rule scenario, what no checker message names is the scenario's rule: its
        # expectations, the oracle, a wrong return value, an exception in ptsim's code (not in
        # the policy's own: a NotImplementedError is no broken rule).
        kernel_side = failure.kind == "exception" and failure.where.startswith("in ptsim's")
        if failure.rule is None and (failure.kind in ("oracle", "expect", "return", "checker") or kernel_side):
            failure.rule = rule
        cut = lines_of(steps[: failure.line + 1])
        shrunk, tried = cut, 0
        if shrink_failures and failure.kind != "timeout":
            shrunk, tried = shrink(cut, policy, failure, limit, deadline)
        ran["shrink_candidates"] = tried
        final = failure if failure.kind == "timeout" else run(parse(shrunk), policy, limit)[0]
        if final is None or final.signature() != failure.signature():  # cannot happen unless the policy is flaky
            final, shrunk = failure, cut
        final.rule = failure.rule
        result = Result(policy, False, shrunk, failure.rule, final, name, ran, len(lines), sharing, seconds=time.monotonic() - start)
        if getattr(policy, "withhold_rule", False):
            result.withheld, result.rule, final.rule = failure.rule, None, None
            result.found_by = "a rule scenario" if rule else "a random machine"
        return result
    return Result(policy, True, [], None, None, "", ran, 0, sharing, stopped, time.monotonic() - start)


class Graded:
    """One graded step of the lab: `check(policy)` runs `check` with the arguments given here
    and records, as the book's exercises do, whether a policy has passed (`solved`), the last
    result (`last`) and the tries, so that an autograder (the nbgrader course) can grade it."""

    def __init__(self, **arguments):
        bad = set(arguments) - {"seconds", "seed", "only", "machines", "limit"}
        if bad:
            raise ValueError(f"arguments: {sorted(bad)} are not arguments of ptsim.lab.check")
        self.arguments = arguments
        self.tries, self.solved, self.last = 0, False, None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.arguments.items())
        return f"Graded({shown}): check(policy) runs ptsim.lab.check(policy, {shown})"

    def check(self, policy: CopyPolicy) -> Result:
        self.last = check(policy, **self.arguments)
        self.tries += 1
        self.solved = self.solved or self.last.ok
        return self.last


@dataclass
class Played:
    """A machine after `play`: its processes by name, and the events of the last call."""

    machine: Machine
    processes: dict
    events: list


def play(calls, policy: CopyPolicy, *, limit: float = 10.0) -> Played:
    """Play lab lines on `policy` for an experiment of your own, checking nothing (expect
    lines are skipped); the last call is traced."""
    _validate(policy, limit, limit)
    player = _Player(policy)
    steps = [s for s in parse(calls) if s.op != "expect"]
    events = []
    with _time_limit(limit):
        for step in steps[:-1]:
            player.play(step)
        if steps:
            with player.m.trace() as events:
                player.play(steps[-1])
    return Played(player.m, {name: p for name, (p, _) in player.procs.items()}, list(events))


def lines_of(steps: list[Step]) -> list[str]:
    return [s.text for s in steps]


def replay(calls, policy: CopyPolicy, *, limit: float = 10.0) -> Result:
    """Play lab lines (`result.calls`, or any scenario) on `policy` once, as check does."""
    _validate(policy, limit, limit)
    steps = parse(calls)
    lines = lines_of(steps)
    start = time.monotonic()
    failure, played = run(steps, policy, limit)
    ran = {"rules": 0, "machines": 0, "calls": sum(1 for s in steps[:played] if s.op != "expect"), "shrink_candidates": 0}
    if failure is None:
        return Result(policy, True, [], None, None, "", ran, 0, _is_sharing(policy), seconds=time.monotonic() - start)
    return Result(policy, False, lines, failure.rule, failure, "replay", ran, len(lines), _is_sharing(policy),
                  seconds=time.monotonic() - start)


class Stub(CopyPolicy):
    """Where the lab's student starts: a CopyPolicy that shares every VMA's tables
    (vma_needs_copy) and leaves Phillips' three changes to write. Until they are written,
    fork raises NotImplementedError, and so do a write fault and a zap on a shared table
    (use count above 1); on a table of one process they do what classic fork's kernel does."""

    name = "lab"

    def vma_needs_copy(self, vma) -> bool:
        return True

    def copy_pte_tables(self, k, dst, src, vma, dst_pmd, src_pmd, indexes, pmd_base):
        raise NotImplementedError("copy_pte_tables: step 1, share the tables at fork")

    def prepare_pte_write(self, k, mm, slot, addr, func):
        table = k.slot_table(slot)
        if k.mem_map.refcount[table] > 1:
            raise NotImplementedError("prepare_pte_write: step 2, unshare a shared table before a write")
        return table

    def zap_pte_table(self, k, mm, slot, table, base, lo, hi, whole, tlb, func):
        if k.mem_map.refcount[table] > 1:
            raise NotImplementedError("zap_pte_table: step 3, drop a shared table's count, or unshare it first")
        super().zap_pte_table(k, mm, slot, table, base, lo, hi, whole, tlb, func)
