"""Scenarios: the same mm calls, played on ptsim here and on the host kernel by `real`.

A scenario is a text file, one call per line; `#` starts a comment. Processes are named
p0, p1, ...: p0 exists at the start, every other one is made by a fork, and a name is never
used again once its process has exited.

    p0 mmap 0x2000_0000_0000 4M rw private    # mmap ADDR LENGTH PROT private|shared
    p0 write 0x2000_0000_0000 "hello\\n"       # write ADDR "TEXT" (Python bytes escapes)
    p0 write 0x2000_001f_f000 0xab*8K          # write ADDR BYTE*LENGTH: a fill
    p0 fork p1                                 # p1: a new process, a fork of p0
    p1 read 0x2000_0000_0000 16                # read ADDR LENGTH
    p1 mprotect 0x2000_0000_0000 1M r          # PROT: rw, r or none
    p0 munmap 0x2000_0020_0000 2M
    p1 exit
    observe                                    # every live process's frames, VmPTE, VmRSS

Numbers are decimal or 0x-hex, with `_` allowed; a LENGTH may end in K or M (KiB, MiB).
Every address lies in the scenario region, [0x2000_0000_0000, 0x2080_0000_0000): one
top-level (PGD) entry of x86-64, far from anything the host's interpreter maps, so that the
page tables under it are the scenario's alone. mmap, munmap and mprotect take a page-aligned
ADDR (lengths round up to pages, as in Linux); mmaps are anonymous, fixed, and never use
transparent huge pages. A read reads at most 64 KiB, a "TEXT" is at most 64 KiB, a fill may
be any length; the mmaps of a scenario cover at most 32 MiB of distinct pages. Bad input is a
ValueError naming the line and what is wrong.

An access goes page by page in address order, as a forward memcpy does, and stops at the
first page it may not touch: that page's SIGSEGV is recorded, with the bytes read before it.

A player answers with a `Record`: an `Outcome` per line (the result, bytes read, where a
SIGSEGV stopped the access, the access's minor faults) and an `Observation` at every
`observe` line and once more after the last line: for each live process, the frame of every
scenario page it maps, and the page-table bytes (VmPTE) and resident memory (VmRSS) of the
scenario region. `play_sim` plays on ptsim (x86_64, with Linux's fault-around of 64 KiB),
`real.play_real` on the host; `compare.compare` tells the differences.

`generate(seed)` writes a random scenario: several processes, forks of forks (siblings that
share), partial munmaps and mprotects across 2 MiB table boundaries, shared mappings,
mappings beside mappings, exits, reads of untouched pages, and accesses that SIGSEGV.

What the host kernel (Linux 6.18, x86-64) did that ptsim first did not, and ptsim now models:

- fault-around: a read fault on MAP_SHARED memory maps the pages the shmem object already
  holds in the aligned 16-page block around it (clamped to the VMA and the table), at no
  fault of their own (scenarios/fault-around.txt: a child's reads of pages 1, 5 and 15 of a
  shared mapping cost 1, 0 and 0 faults where ptsim counted 1, 1 and 1). `play_sim` turns it
  on; ptsim's default is off, for the oracle's sake (see Kernel.fault_around_bytes);
- VMA merging: an mmap or mprotect merges neighbouring VMAs, and a merged VMA with an
  anon_vma makes fork copy all its entries, the zero page's too (scenarios/vma-merge.txt: a
  child reads a page its parent had only read with 0 faults, where ptsim counted 1). The
  flags must match, VM_ACCOUNT included, which an mprotect to read-only gives back when the
  private memory never held a page: random scenario 1 of 50 lines found that one.

Measured and already as ptsim has it: fork copies no entry of a MAP_SHARED mapping, nor of a
private one that never held an anonymous page (vma_needs_copy): right after a fork the child
maps none of them and has no table for them (VmPTE 0 kB in scenarios/fault-around.txt). And
no access to private memory, however early in a fresh mapping, counted a fault that ptsim's
`copy` does not: the extra fault seen elsewhere is the interpreter's own, which the host player
never counts (see real.py).

And what ptsim does differently on purpose: an mprotect over a range with a hole changes the
VMAs before the hole and then fails with ENOMEM in Linux; ptsim refuses it whole, changing
nothing (its rule for bad arguments): scenarios/known-differences/mprotect-over-a-hole.txt.
The generator never asks for one.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass, field

from ..errors import SegmentationFault
from ..machine import Machine
from .real import MAX_TRANSFER, PAGE, REGION_BYTES, REGION_START

REGION_END = REGION_START + REGION_BYTES
MAX_SCENARIO_BYTES = 32 << 20  # distinct pages the mmaps of one scenario may cover
# Linux's default /sys/kernel/debug/fault_around_bytes: a read fault on MAP_SHARED memory maps
# the neighbouring pages already in the page cache, up to 16 of them (mm/memory.c).
LINUX_FAULT_AROUND_BYTES = 64 << 10
PROTS = {"rw": "rw", "r": "r", "none": ""}  # scenario name -> ptsim's prot
PROT_NAMES = {v: k for k, v in PROTS.items()}
UNITS = {"K": 1 << 10, "M": 1 << 20}
ARITY = {"mmap": 4, "munmap": 2, "mprotect": 3, "write": 2, "read": 2, "fork": 1, "exit": 0}
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|#.*|[^\s"#]+|"')
_NAME = re.compile(r"p(0|[1-9][0-9]*)")


# -- the scenario ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One line of a scenario. `process` is None for `observe`."""

    line: int
    process: str | None
    op: str
    addr: int = 0
    length: int = 0
    prot: str = ""  # ptsim's: "", "r" or "rw"
    shared: bool = False
    data: bytes | None = None  # a write's bytes, or None for a fill
    fill: int | None = None  # a fill's byte
    child: str | None = None  # the new process of a fork

    def __str__(self) -> str:
        if self.op == "observe":
            return "observe"
        args = {
            "mmap": lambda: f"{self.addr:#x} {_size(self.length)} {PROT_NAMES[self.prot]} {'shared' if self.shared else 'private'}",
            "munmap": lambda: f"{self.addr:#x} {_size(self.length)}",
            "mprotect": lambda: f"{self.addr:#x} {_size(self.length)} {PROT_NAMES[self.prot]}",
            "write": lambda: f"{self.addr:#x} " + (_text(self.data) if self.data is not None else f"{self.fill:#04x}*{_size(self.length)}"),
            "read": lambda: f"{self.addr:#x} {self.length}",
            "fork": lambda: self.child,
            "exit": lambda: "",
        }[self.op]()
        return f"{self.process} {self.op} {args}".rstrip()

    def payload(self) -> bytes:
        """The bytes a write stores."""
        return self.data if self.data is not None else bytes([self.fill]) * self.length


@dataclass(frozen=True)
class Scenario:
    calls: tuple[Call, ...]

    def __str__(self) -> str:
        return "".join(f"{call}\n" for call in self.calls)

    def pages(self) -> list[tuple[int, int]]:
        """The scenario's pages, as (first vpn, count) runs: every page some mmap covers."""
        spans = sorted((c.addr // PAGE, -(-(c.addr + c.length) // PAGE)) for c in self.calls if c.op == "mmap")
        runs: list[list[int]] = []
        for lo, hi in spans:
            if runs and lo <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], hi)
            else:
                runs.append([lo, hi])
        return [(lo, hi - lo) for lo, hi in runs]


def _size(n: int) -> str:
    for suffix in ("M", "K"):
        if n % UNITS[suffix] == 0:
            return f"{n // UNITS[suffix]}{suffix}"
    return str(n)


def _text(data: bytes) -> str:
    return '"' + repr(data)[2:-1].replace('"', '\\"').replace("\\'", "'") + '"'


# -- parsing -------------------------------------------------------------------------------


def parse(text: str) -> Scenario:
    """The scenario in `text`; a ValueError names the first bad line and what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, not {type(text).__name__}")
    live, used, calls = {"p0"}, {"p0"}, []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            call = parse_line(number, line, live, used)
        except ValueError as e:
            raise ValueError(f"line {number}: {e}: {line.strip()!r}") from None
        if call is not None:
            calls.append(call)
            if call.op == "mmap" and sum(n for _, n in Scenario(tuple(calls)).pages()) * PAGE > MAX_SCENARIO_BYTES:
                raise ValueError(f"line {number}: the scenario's mappings cover more than {_size(MAX_SCENARIO_BYTES)} of distinct pages")
    return Scenario(tuple(calls))


def parse_line(number: int, line: str, live: set[str], used: set[str]) -> Call | None:
    tokens = []
    for token in _TOKEN.findall(line):
        if token.startswith("#"):
            break
        if token == '"':
            raise ValueError("unterminated string")
        tokens.append(token)
    if not tokens:
        return None
    if tokens[0] == "observe":
        if len(tokens) > 1:
            raise ValueError("observe takes no argument: it observes every live process")
        return Call(number, None, "observe")
    if not _NAME.fullmatch(tokens[0]):
        raise ValueError(f"{tokens[0]!r} is not a process name such as p0 or p1, nor observe")
    process, op, args = tokens[0], tokens[1] if len(tokens) > 1 else None, tokens[2:]
    if op not in ARITY:
        raise ValueError(f"{op!r} is not a call: one of {', '.join(ARITY)}")
    if len(args) != ARITY[op]:
        raise ValueError(f"{op} takes {ARITY[op]} argument(s), not {len(args)}")
    if process not in live:
        raise ValueError(f"process {process} {'has exited' if process in used else 'does not exist (fork it first)'}")
    if op == "exit":
        live.discard(process)
        return Call(number, process, op)
    if op == "fork":
        child = args[0]
        if not _NAME.fullmatch(child):
            raise ValueError(f"{child!r} is not a process name such as p1")
        if child in used:
            raise ValueError(f"process name {child} is already taken")
        live.add(child)
        used.add(child)
        return Call(number, process, op, child=child)
    addr = parse_number(args[0], "address")
    if op == "read":
        length = parse_number(args[1], "length")
        if not 0 < length <= MAX_TRANSFER:
            raise ValueError(f"read length must be 1 to {MAX_TRANSFER} bytes, not {length}")
        check_in_region(addr, length)
        return Call(number, process, op, addr, length)
    if op == "write":
        data, fill, length = _payload(args[1])
        check_in_region(addr, length)
        return Call(number, process, op, addr, length, data=data, fill=fill)
    length = parse_number(args[1], "length")
    if addr % PAGE:
        raise ValueError(f"address {addr:#x} is not aligned to the {PAGE}-byte page")
    if length <= 0:
        raise ValueError(f"length must be positive, not {length}")
    length = -(-length // PAGE) * PAGE
    check_in_region(addr, length)
    if op == "munmap":
        return Call(number, process, op, addr, length)
    prot = _prot(args[2])
    if op == "mprotect":
        return Call(number, process, op, addr, length, prot)
    if args[3] not in ("private", "shared"):
        raise ValueError(f"mapping kind must be 'private' or 'shared', not {args[3]!r}")
    return Call(number, process, op, addr, length, prot, shared=args[3] == "shared")


def parse_number(token: str, what: str) -> int:
    scale = UNITS.get(token[-1:].upper(), 1)
    digits = token[:-1] if scale > 1 else token
    try:
        return int(digits, 0) * scale
    except ValueError:
        raise ValueError(f"{what} {token!r} is not a number such as 4096, 0x1000, 4K or 2M") from None


def _prot(token: str) -> str:
    if token not in PROTS:
        raise ValueError(f"prot must be one of {', '.join(PROTS)}, not {token!r}")
    return PROTS[token]


def _payload(token: str) -> tuple[bytes | None, int | None, int]:
    """(data, fill byte, length) of a write's "TEXT" or BYTE*LENGTH."""
    if token.startswith('"'):
        try:
            data = ast.literal_eval("b" + token)
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"bad string {token}: {e}") from None
        if not 0 < len(data) <= MAX_TRANSFER:
            raise ValueError(f"a string must hold 1 to {MAX_TRANSFER} bytes, not {len(data)}")
        return data, None, len(data)
    byte, star, count = token.partition("*")
    if not star:
        raise ValueError(f'write data must be a "TEXT" or BYTE*LENGTH such as 0xab*4K, not {token!r}')
    fill, length = parse_number(byte, "fill byte"), parse_number(count, "length")
    if not 0 <= fill <= 255:
        raise ValueError(f"fill byte must be 0 to 255, not {fill}")
    if length <= 0:
        raise ValueError(f"length must be positive, not {length}")
    return None, fill, length


def check_in_region(addr: int, length: int) -> None:
    if not (REGION_START <= addr and addr + length <= REGION_END):
        raise ValueError(f"[{addr:#x}, {addr + length:#x}) is outside the scenario region [{REGION_START:#x}, {REGION_END:#x})")


# -- what a kernel did ---------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one line did: "ok", "SIGSEGV", or the errno name of a failed call (ENOMEM)."""

    result: str = "ok"
    data: bytes = b""  # what a read read (up to the SIGSEGV, if one stopped it)
    address: int | None = None  # the first address a SIGSEGV refused
    minflt: int | None = None  # an access's minor faults


@dataclass(frozen=True)
class ProcessView:
    """One process at an observation: vpn -> frame for each scenario page it maps, and the
    scenario region's page tables (VmPTE) and resident pages (VmRSS), in kB."""

    frames: dict[int, int]
    vm_pte: int
    vm_rss: int


@dataclass(frozen=True)
class Observation:
    line: int | None  # the observe line, or None for the one after the last line
    processes: dict[str, ProcessView]


@dataclass
class Record:
    kernel: str  # who played it: "ptsim copy", "Linux 6.18.44 (host)"
    outcomes: list[Outcome]  # one per call, in order
    observations: list[Observation]
    frames_known: bool = True  # False when the host hides PFNs from pagemap
    notes: list[str] = field(default_factory=list)


# -- playing on ptsim ------------------------------------------------------------------------


def play_sim(scenario: Scenario, policy: str = "copy", check: bool = False) -> Record:
    """Play `scenario` on a ptsim x86_64 machine with fork policy `policy`, with Linux's
    fault-around; `check` runs the invariant checker after every line."""
    if not isinstance(scenario, Scenario):
        raise ValueError(f"scenario must be a Scenario (see parse), not {type(scenario).__name__}")
    machine = Machine(arch="x86_64", policy=policy, ram=_ram_for(scenario))
    machine.kernel.fault_around_bytes = LINUX_FAULT_AROUND_BYTES
    procs = {"p0": machine.spawn()}
    outcomes, observations = [], []
    for call in scenario.calls:
        p = procs.get(call.process)
        if call.op == "observe":
            observations.append(_observe_sim(machine, procs, scenario, call.line))
            outcomes.append(Outcome())
        elif call.op in ("read", "write"):
            outcomes.append(_access_sim(p, call))
        elif call.op == "fork":
            procs[call.child] = p.fork()
            outcomes.append(Outcome())
        elif call.op == "exit":
            procs.pop(call.process).exit()
            outcomes.append(Outcome())
        else:
            outcomes.append(_mm_call_sim(p, call))
        if check:
            machine.check()
    observations.append(_observe_sim(machine, procs, scenario, None))
    return Record(f"ptsim {policy}", outcomes, observations)


def _ram_for(scenario: Scenario) -> int:
    """Enough frames for the worst case: every process with a private copy of every page, the
    shmem pages, and a full set of tables each."""
    pages = sum(n for _, n in scenario.pages())
    processes = 1 + sum(c.op == "fork" for c in scenario.calls)
    tables = processes * (pages // 512 + 2 * len(scenario.pages()) + 4)
    return ((processes + 1) * pages + tables + 64) * PAGE


def _mm_call_sim(p, call: Call) -> Outcome:
    try:
        if call.op == "mmap":
            p.mmap(call.addr, call.length, call.prot, call.shared)
        elif call.op == "munmap":
            p.munmap(call.addr, call.length)
        else:
            p.mprotect(call.addr, call.length, call.prot)
    except ValueError as e:
        if "ENOMEM" not in str(e):  # the parser lets through no other bad argument
            raise
        return Outcome("ENOMEM")
    return Outcome()


def _access_sim(p, call: Call) -> Outcome:
    """Page by page, stopping at the first SIGSEGV, as the host's player does."""
    before, read, payload = p.minflt, [], call.payload() if call.op == "write" else b""
    for lo, n in page_parts(call.addr, call.length):
        try:
            if call.op == "read":
                read.append(p.read(lo, n))
            else:
                p.write(lo, payload[lo - call.addr : lo - call.addr + n])
        except SegmentationFault:
            return Outcome("SIGSEGV", b"".join(read), lo, p.minflt - before)
    return Outcome("ok", b"".join(read), None, p.minflt - before)


def page_parts(addr: int, length: int) -> list[tuple[int, int]]:
    """(address, bytes) of each page's part of [addr, addr + length), in address order."""
    out, end = [], addr + length
    while addr < end:
        n = min(end, (addr // PAGE + 1) * PAGE) - addr
        out.append((addr, n))
        addr += n
    return out


def _observe_sim(machine: Machine, procs: dict, scenario: Scenario, line: int | None) -> Observation:
    views = {}
    for name, p in procs.items():
        frames = {}
        for vpn, n in scenario.pages():
            for v in range(vpn, vpn + n):
                pa = p.translate(v * PAGE)
                if pa is not None:
                    frames[v] = pa // PAGE
        status = p.status()
        views[name] = ProcessView(frames, status["VmPTE"], status["VmRSS"])
    return Observation(line, views)


# -- random scenarios ----------------------------------------------------------------------

# Where the generator's calls land: 8 MiB from the start of the region, three 2 MiB table
# boundaries inside. Most addresses fall within a few pages of a boundary.
WINDOW_PAGES = 2048
BOUNDARIES = (512, 1024, 1536)


def generate(seed: int, calls: int = 40, max_processes: int = 5) -> Scenario:
    """A random scenario, the same for the same arguments.

    It keeps its own picture of each process's mappings (page -> prot, shared), only so that
    it can aim: most accesses go to mapped pages, some to unmapped or forbidden ones (and
    SIGSEGV), and an mprotect covers only mapped pages (Linux would change part of a range
    with a hole and then fail; ptsim refuses all of it).
    """
    for name, value, low in (("seed", seed, None), ("calls", calls, 1), ("max_processes", max_processes, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or (low is not None and value < low):
            raise ValueError(f"{name} must be an int{'' if low is None else f' >= {low}'}, not {value!r}")
    g = _Generator(random.Random(seed), max_processes)
    g.first_mappings()
    while len(g.lines) < calls:
        g.step()
    return parse("\n".join(g.lines))


class _Generator:
    def __init__(self, rng: random.Random, max_processes: int):
        self.rng, self.max_processes = rng, max_processes
        self.maps = {"p0": {}}  # live process -> {page index: (prot, shared)}
        self.lines: list[str] = []
        self.next_name = 1

    def addr(self, page: int) -> str:
        return f"{REGION_START + page * PAGE:#x}"

    def page(self) -> int:
        if self.rng.random() < 0.7:
            return min(max(self.rng.choice(BOUNDARIES) + self.rng.randint(-6, 6), 0), WINDOW_PAGES - 1)
        return self.rng.randrange(WINDOW_PAGES)

    def emit(self, process: str, line: str) -> None:
        self.lines.append(f"{process} {line}")

    def mmap(self, process: str, first: int, npages: int, prot: str, shared: bool) -> None:
        first = min(first, WINDOW_PAGES - 1)
        npages = min(npages, WINDOW_PAGES - first)
        self.emit(process, f"mmap {self.addr(first)} {npages * PAGE} {prot} {'shared' if shared else 'private'}")
        for page in range(first, first + npages):
            self.maps[process][page] = (prot, shared)

    def first_mappings(self) -> None:
        """A private mapping across a table boundary, and often a shared one beside it."""
        b = self.rng.choice(BOUNDARIES)
        self.mmap("p0", b - self.rng.randint(16, 300), self.rng.randint(320, 700), "rw", False)
        if self.rng.random() < 0.7:
            start = self.rng.choice([b - 520, b + 420])
            self.mmap("p0", max(start, 0), self.rng.randint(8, 96), self.rng.choice(["rw", "rw", "r"]), True)

    def step(self) -> None:
        r = self.rng
        process = r.choice(sorted(self.maps))
        kinds = {"write": 30, "read": 24, "fork": 9, "munmap": 6, "mprotect": 8, "mmap": 6, "exit": 4, "observe": 4}
        getattr(self, "do_" + r.choices(list(kinds), list(kinds.values()))[0])(process)

    def target(self, process: str) -> int:
        """A page to access: mostly a mapped one, often a shared one, sometimes anywhere."""
        mapped = self.maps[process]
        if not mapped or self.rng.random() < 0.2:
            return self.page()
        shared = [page for page, (_, is_shared) in mapped.items() if is_shared]
        return self.rng.choice(sorted(shared if shared and self.rng.random() < 0.4 else mapped))

    def do_write(self, process: str) -> None:
        r = self.rng
        addr = REGION_START + self.target(process) * PAGE + r.choice([0, 0, r.randrange(PAGE)])
        if r.random() < 0.5:
            self.emit(process, f"write {addr:#x} {_text(bytes(r.randrange(256) for _ in range(r.randint(1, 12))))}")
        else:
            self.emit(process, f"write {addr:#x} {r.randrange(256):#04x}*{r.choice([1, 100, PAGE, 3 * PAGE, 20 * PAGE])}")

    def do_read(self, process: str) -> None:
        r = self.rng
        addr = REGION_START + self.target(process) * PAGE + r.choice([0, 0, r.randrange(PAGE)])
        self.emit(process, f"read {addr:#x} {r.choice([1, 8, 64, 5000, 9000])}")

    def do_fork(self, process: str) -> None:
        if len(self.maps) < self.max_processes:
            child = f"p{self.next_name}"
            self.next_name += 1
            self.emit(process, f"fork {child}")
            self.maps[child] = dict(self.maps[process])

    def do_exit(self, process: str) -> None:
        if len(self.maps) > 1:
            self.emit(process, "exit")
            del self.maps[process]

    def do_munmap(self, process: str) -> None:
        first, npages = self.page(), self.rng.choice([1, 3, 16, 40])
        self.emit(process, f"munmap {self.addr(first)} {npages * PAGE}")
        for page in range(first, first + npages):
            self.maps[process].pop(page, None)

    def do_mprotect(self, process: str) -> None:
        mapped = self.maps[process]
        if mapped:
            first, wanted, npages = self.rng.choice(sorted(mapped)), self.rng.choice([1, 4, 16, 64]), 1
            while npages < wanted and first + npages in mapped:
                npages += 1
            prot = self.rng.choice(["r", "none", "rw", "rw"])
            self.emit(process, f"mprotect {self.addr(first)} {npages * PAGE} {prot}")
            for page in range(first, first + npages):
                mapped[page] = (prot, mapped[page][1])

    def do_mmap(self, process: str) -> None:
        """Anywhere, or right beside a mapping (where Linux may merge the two VMAs)."""
        r, mapped = self.rng, self.maps[process]
        npages = r.choice([1, 8, 40, 200])
        first = self.page()
        if mapped and r.random() < 0.5:
            low = high = r.choice(sorted(mapped))
            while low - 1 in mapped:
                low -= 1
            while high in mapped:
                high += 1
            first = high if r.random() < 0.5 or low < npages else low - npages
        self.mmap(process, first, npages, r.choice(["rw", "rw", "r"]), r.random() < 0.4)

    def do_observe(self, process: str) -> None:
        self.lines.append("observe")
