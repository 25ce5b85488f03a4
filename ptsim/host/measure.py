"""The cost of fork, measured on this machine's kernel, beside ptsim's page-table figures.

For each size of private anonymous memory, and with transparent huge pages off and on, this
process maps a buffer, writes one byte of every 4 KiB page of it, and forks `repeats` times.
Each child calls os._exit(0) at once. Sparse sizes (`sparse_sizes`) are measured the same way
with THP off, but with one page written per 2 MiB: one PTE in every last-level table, which
tells the cost per table apart from the cost per PTE. Two latencies are timed in the parent:

  fork             from just before os.fork() to just after it returns
  fork+exit+wait   from the same start to just after waitpid() has reaped the child

Before every fork but the first the parent writes its whole buffer again, so that every fork
finds writable PTEs to write-protect and its tables cold in the caches (the protocol of
bench/fork_bench.py, whose real-fork column uses these same functions). The garbage collector
is off while it runs, and every path runs once on a small buffer before anything is timed.

Beside the timings, for each size:

  VmPTE            this process's /proc/self/status VmPTE while the buffer is mapped, what
                   mapping and touching the buffer added to it, and a child's VmPTE
  huge pages       what AnonHugePages (/proc/self/smaps_rollup) gained: whether the kernel
                   really gave the buffer 2 MiB pages
  ptsim            VmPTE of a simulated x86_64 process mapping the same range at the same
                   address, every one of its last-level tables populated (`predict_vmpte_kb`)

The two VmPTE figures differ by the upper tables alone: ptsim's process maps nothing else, so
it counts the pud and pmd tables above the buffer too (4 kB each, a pmd table per GiB), while
the real process already had most of them for its own mappings. On this project's machine the
buffer's growth was ptsim's figure less 8 kB at every size from 64 MiB to 4 GiB.

The buffer starts on a 2 MiB boundary, so that its size decides how many last-level tables
it needs and huge pages can cover all of it. `fit` then fits, by least squares with every
cost held non-negative (`nonnegative_lstsq`),

    latency = fixed + per_pte * PTEs copied + per_table * tables

where a row copies one PTE per written 4 KiB page not in a huge page, and its child gets one
table per 2 MiB (copied, or deposited beside a huge PMD). With every page written and THP off,
every row has 512 PTEs per table, so the two costs cannot be told apart: it takes THP on rows
(a table without PTEs, but beside a huge PMD, which may cost otherwise) or sparse rows (a
table with one PTE) as well.

Memory is bounded: a size runs only if its buffer, plus the page tables of parent and child
(the child shares every page, copy-on-write, and exits at once), fits in `memory_limit`,
by default the smaller of half of MemAvailable and what this process's memory cgroup still
allows (`cgroup_memory_left`: on a JupyterHub, the user's limit) when the run starts. Larger
sizes are skipped with the reason.

    results = run(sizes=["64M", "256M"], repeats=5, sparse_sizes=["1G"], progress=ProgressBar())
    save(results, "artifacts/measure"); results = load("artifacts/measure")
    print(format_table(results)); print(fit(results)); plot(results, fit(results))

    python -m ptsim.host.measure --max-size 4G --repeats 5 --out artifacts/measure

Linux only (fork, madvise, /proc): elsewhere `run` raises RuntimeError. Saved results load,
print and plot anywhere.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import mmap
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hardware import ARCHES
from ..machine import Machine
from .procfs import read_status

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
X86_64 = ARCHES["x86_64"]
PAGE_SIZE = X86_64.page_size
TABLE_SPAN = X86_64.pte_span  # what one last-level table maps, and the size of a huge page: 2 MiB
THP_MODES = ("off", "on")
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 64 * MiB, 4 * GiB
WARM_UP_SIZE = 4 * MiB
BOOK_MACHINE_NS_PER_PTE = 51  # fork per PTE on the book's machine (Linux 6.18, 2 vCPUs), measured 2026-11-25
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage"
FILE_STEM = "fork_cost"  # save() writes fork_cost.csv and fork_cost.json
LATENCIES = {"fork": "fork", "fork_wait": "fork+exit+wait"}

Progress = Callable[[int, int, str], None]  # progress(done, total, message)


# -- sizes -----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'64M', '64 MiB' or '67108864' -> 67108864 (binary units)."""
    units = {"K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}
    digits = str(text).strip().upper().removesuffix("IB").removesuffix("B").strip()
    try:
        return int(digits[:-1]) * units[digits[-1]] if digits[-1:] in units else int(digits)
    except ValueError:
        raise ValueError(f"size {text!r} is not a size such as 64M or 1G") from None


def format_size(size: int) -> str:
    """67108864 -> '64 MiB': the largest binary unit that divides it."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def default_sizes(min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE) -> list[int]:
    """min_size, twice that, ... up to max_size."""
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        _check_size(name, value)
    if max_size < min_size:
        raise ValueError(f"max_size ({format_size(max_size)}) is below min_size ({format_size(min_size)})")
    sizes = [min_size]
    while sizes[-1] * 2 <= max_size:
        sizes.append(sizes[-1] * 2)
    return sizes


def _check_size(name: str, size) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or size % TABLE_SPAN:
        shown = format_size(size) if isinstance(size, int) and not isinstance(size, bool) else repr(size)
        raise ValueError(f"{name} must be a positive multiple of 2 MiB, not {shown}")


def memory_needed(size: int, stride: int = PAGE_SIZE) -> int:
    """Host memory one size takes, one page written per `stride` bytes: those pages (and one
    table span more, to align the buffer) and the last-level tables mapping it in parent and
    child. The child touches nothing, so it copies no page."""
    table_bytes = size // TABLE_SPAN * PAGE_SIZE
    return size // stride * PAGE_SIZE + TABLE_SPAN + 2 * table_bytes


# -- the host --------------------------------------------------------------------------------


def require_linux() -> None:
    """Measuring needs fork, madvise and /proc with 4 KiB pages: say so plainly elsewhere."""
    if sys.platform != "linux":
        raise RuntimeError(f"measuring fork needs Linux (fork, madvise, /proc); this is {sys.platform}")
    if mmap.PAGESIZE != PAGE_SIZE:
        raise RuntimeError(f"measuring fork needs 4 KiB pages; this kernel's are {mmap.PAGESIZE} bytes")


def meminfo_kb(field_name: str) -> int:
    """A line of /proc/meminfo (MemTotal, MemAvailable), in kB."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


CGROUP_LIMITS = (  # (file with the limit, file with the usage it caps), cgroup v2 then v1
    ("memory.max", "memory.current"),
    ("memory.high", "memory.current"),  # v2's throttle: above it the kernel reclaims hard
    ("memory.limit_in_bytes", "memory.usage_in_bytes"),
)


def cgroup_memory_left(proc_cgroup: str | Path = "/proc/self/cgroup",
                       cgroup_fs: str | Path = "/sys/fs/cgroup") -> tuple[int, str] | None:
    """Bytes this process's memory cgroup still lets it use, and which limit says so; None
    where no cgroup limits its memory.

    The cgroup is named in `proc_cgroup`: "0::PATH" (v2, mounted at `cgroup_fs`, or at
    `cgroup_fs`/unified beside v1) and "N:...memory...:PATH" (v1, at `cgroup_fs`/memory). For
    that cgroup and each one above it that the mount shows (a container may see only its own,
    at the mount's top), every limit of CGROUP_LIMITS that is set (not "max") leaves the limit
    less the usage; the smallest of these is the answer (0 if the usage is already over)."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    fs, tightest = Path(cgroup_fs), None
    for line in lines:
        if line.count(":") < 2:
            continue
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":
            mounts = [fs, fs / "unified"]
        elif "memory" in controllers.split(","):
            mounts = [fs / "memory"]
        else:
            continue
        parts = [part for part in path.split("/") if part]
        for mount in mounts:
            for depth in range(len(parts), -1, -1):
                folder = mount.joinpath(*parts[:depth])
                for limit_file, usage_file in CGROUP_LIMITS:
                    try:
                        limit = (folder / limit_file).read_text().strip()
                        usage = int((folder / usage_file).read_text())
                    except (OSError, ValueError):
                        continue
                    if limit == "max":
                        continue
                    left = max(int(limit) - usage, 0)
                    if tightest is None or left < tightest[0]:
                        tightest = (left, f"{limit_file} {int(limit) / GiB:.2f} GiB less {usage_file} "
                                          f"{usage / GiB:.2f} GiB, {folder}")
    return tightest


def default_memory_limit() -> tuple[int, str]:
    """Bytes one size may use unless told: the smaller of half of MemAvailable and what the
    memory cgroup leaves (`cgroup_memory_left`), and a phrase saying which it is."""
    available = meminfo_kb("MemAvailable") * KiB
    limit, says = available // 2, f"half of MemAvailable, {available / GiB:.2f} GiB"
    cgroup = cgroup_memory_left()
    if cgroup is not None and cgroup[0] < limit:
        limit, says = cgroup[0], f"what this process's memory cgroup leaves: {cgroup[1]}"
    return limit, says


def thp_setting(name: str = "enabled") -> str | None:
    """The chosen word of /sys/kernel/mm/transparent_hugepage/NAME ('madvise' of 'always
    [madvise] never'), or None on a kernel built without THP."""
    try:
        with open(f"{THP_SYSFS}/{name}") as f:
            words = f.read().split()
    except FileNotFoundError:
        return None
    return next((w[1:-1] for w in words if w.startswith("[")), None)


def process_anon_huge_kb() -> int:
    """AnonHugePages of this whole process, from /proc/self/smaps_rollup."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    return 0


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine_info() -> dict:
    """What a reader needs to compare runs: kernel, CPU, memory, THP, versions."""
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    return {
        "kernel": os.uname().release,
        "machine": os.uname().machine,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_total_kb": meminfo_kb("MemTotal"),
        "mem_available_kb": meminfo_kb("MemAvailable"),
        "thp_enabled": thp_setting("enabled"),
        "thp_defrag": thp_setting("defrag"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "load_average": load_average(),
    }


class TouchedBuffer:
    """A private anonymous mapping, `size` bytes of it from a 2 MiB boundary written one page
    per `stride` bytes (every page by default; TABLE_SPAN writes one page per last-level
    table), 4 KiB pages only (thp "off", MADV_NOHUGEPAGE) or huge pages asked for (thp "on",
    MADV_HUGEPAGE). The advice is given before the first write, which decides the page size."""

    def __init__(self, size: int, thp: str = "off", stride: int = PAGE_SIZE):
        if thp not in THP_MODES:
            raise ValueError(f"thp must be one of {THP_MODES}, not {thp!r}")
        if stride not in (PAGE_SIZE, TABLE_SPAN):
            raise ValueError(f"stride must be {PAGE_SIZE} or {TABLE_SPAN}, not {stride!r}")
        advice = {"off": mmap.MADV_NOHUGEPAGE, "on": mmap.MADV_HUGEPAGE}[thp]
        self.size = size
        self._map = mmap.mmap(-1, size + TABLE_SPAN, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._map.madvise(advice)
        whole = np.frombuffer(self._map, dtype=np.uint8)
        start = whole.__array_interface__["data"][0]
        skip = -start % TABLE_SPAN
        self.address = start + skip
        self._pages = whole[skip : skip + size : stride]  # one byte of every page written
        self.write_every_page()

    def write_every_page(self) -> None:
        """Allocate every page written the first time; after a fork, make their PTEs writable again."""
        self._pages[:] = 1

    def close(self) -> None:
        self._pages = None  # mmap refuses to close while a view of it exists
        self._map.close()

    def __enter__(self) -> TouchedBuffer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def time_fork() -> tuple[int, int]:
    """Fork once, the child exiting at once: ns until fork returned in the parent, and until
    waitpid had reaped the child."""
    t0 = time.perf_counter_ns()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    t1 = time.perf_counter_ns()
    os.waitpid(pid, 0)
    return t1 - t0, time.perf_counter_ns() - t0


def time_forks(buf: TouchedBuffer, repeats: int) -> tuple[list[int], list[int]]:
    """`repeats` of time_fork, each of a parent that has just written its whole buffer."""
    forks, waits = [], []
    for i in range(repeats):
        if i:
            buf.write_every_page()  # the last child has gone: make every PTE writable again
        fork_ns, wait_ns = time_fork()
        forks.append(fork_ns)
        waits.append(wait_ns)
    return forks, waits


def child_vmpte_kb() -> int:
    """VmPTE of a child of this process, read while it waits on a pipe, before it exits."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        return read_status(pid)["VmPTE"]
    finally:
        os.close(w)  # the child's read returns: it exits
        os.waitpid(pid, 0)


# -- the simulator's prediction --------------------------------------------------------------


def predict_vmpte_kb(address: int, size: int) -> int:
    """VmPTE, in kB, of a ptsim x86_64 process that maps [address, address + size) private and
    has every last-level table of it populated. One read in each table's span is enough: a read
    maps the zero page (no frame used), and VmPTE counts tables, not the entries in them, so
    the figure is the same as after touching every page (tests/test_measure.py checks it), in
    hundredths of a second per GiB where touching every page takes seconds."""
    arch = X86_64
    ram = (size // arch.pte_span + 64) * arch.page_size  # every last-level table, the upper ones and spare
    p = Machine(arch="x86_64", policy="copy", ram=ram).spawn()
    p.mmap(address, size, "rw", False)
    end = address + size
    first_boundary = -(-address // arch.pte_span) * arch.pte_span
    for addr in [address, *range(first_boundary, end, arch.pte_span)]:
        p.read(addr, 1)
    return p.status()["VmPTE"]


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One size with THP off or on: every timing in ns, page tables in kB."""

    size: int  # bytes touched
    thp: str  # "off" or "on"
    address: int  # where the touched range starts (2 MiB aligned)
    fork_ns: list[int]  # one per repeat
    fork_wait_ns: list[int]
    vmpte_parent_kb: int  # this process's VmPTE while the buffer is mapped
    vmpte_buffer_kb: int  # what mapping and touching the buffer added to it
    vmpte_child_kb: int  # a child's VmPTE (it copies no table of a file mapping with no anon page)
    anon_huge_kb: int  # what AnonHugePages gained: the buffer's huge pages
    predicted_vmpte_kb: int  # ptsim's VmPTE for the same range (predict_vmpte_kb)
    stride: int = PAGE_SIZE  # one page written per stride bytes: every page, or one per table (TABLE_SPAN)

    @property
    def fork_ms(self) -> float:
        return statistics.median(self.fork_ns) / 1e6

    @property
    def fork_wait_ms(self) -> float:
        return statistics.median(self.fork_wait_ns) / 1e6

    @property
    def ptes(self) -> int:
        """PTEs fork copies for the buffer: one per written 4 KiB page outside the huge pages."""
        return max(self.size - self.anon_huge_kb * KiB, 0) // self.stride

    @property
    def sparse(self) -> bool:
        """One page written per last-level table, not every page."""
        return self.stride == TABLE_SPAN

    @property
    def tables(self) -> int:
        """Last-level tables the child gets for the buffer: copied, or deposited for a huge PMD."""
        return self.size // TABLE_SPAN


DERIVED = ("fork_ms", "fork_wait_ms", "ptes", "tables", "sparse")  # saved for readers, recomputed on load


@dataclass
class Skipped:
    """A size and mode not measured, and why (memory, or no transparent huge pages)."""

    size: int
    thp: str
    reason: str


@dataclass
class Results:
    """What `run` measured, what it skipped and why, and on what machine."""

    rows: list[Row]
    skipped: list[Skipped] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    repeats: int = 0
    memory_limit: int = 0  # bytes one size could use
    elapsed_s: float = 0.0

    def latency_ms(self, latency: str) -> np.ndarray:
        """The median of every row for `latency` ("fork" or "fork_wait"), in ms."""
        if latency not in LATENCIES:
            raise ValueError(f"latency must be one of {sorted(LATENCIES)}, not {latency!r}")
        return np.array([getattr(r, f"{latency}_ms") for r in self.rows])


# -- measuring -------------------------------------------------------------------------------


def print_progress(done: int, total: int, message: str) -> None:
    """The default progress: a line to stderr."""
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


class ProgressBar:
    """A progress callback for a notebook, `run(progress=ProgressBar())`: an ipywidgets bar
    with the latest line under it, shown where it is made."""

    def __init__(self):
        import ipywidgets as widgets
        from IPython.display import display

        self.bar, self.label = widgets.IntProgress(min=0, max=1), widgets.Label()
        display(widgets.VBox([self.bar, self.label]))

    def __call__(self, done: int, total: int, message: str) -> None:
        self.bar.max, self.bar.value, self.label.value = total, done, message


def measure_size(size: int, thp: str, repeats: int, stride: int = PAGE_SIZE) -> Row:
    """Time `repeats` forks of this process holding a buffer of `size` bytes, one page of it
    written per `stride` bytes."""
    vmpte_before, huge_before = read_status()["VmPTE"], process_anon_huge_kb()
    with TouchedBuffer(size, thp, stride) as buf:
        vmpte = read_status()["VmPTE"]
        huge = max(process_anon_huge_kb() - huge_before, 0)
        forks, waits = time_forks(buf, repeats)
        child_kb = child_vmpte_kb()
        address = buf.address
    return Row(size, thp, address, forks, waits, vmpte, vmpte - vmpte_before, child_kb, huge,
               predict_vmpte_kb(address, size), stride)


def _check_sizes(name: str, sizes, at_least: int) -> list[int]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise ValueError(f"{name} must be a list of sizes, not {sizes!r}")
    try:
        sizes = [parse_size(s) if isinstance(s, str) else s for s in sizes]
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    for s in sizes:
        _check_size(name, s)
    if len(sizes) < at_least or len(set(sizes)) != len(sizes):
        raise ValueError(f"{name} must be distinct and at least {at_least}, not {sizes!r}")
    return sorted(sizes)


def _check_run_args(sizes, repeats, thp, memory_limit, sparse_sizes) -> tuple[list[int], list[int]]:
    sizes = _check_sizes("sizes", default_sizes() if sizes is None else sizes, 1)
    sparse_sizes = _check_sizes("sparse_sizes", sparse_sizes, 0)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be a positive int, not {repeats!r}")
    if isinstance(thp, str) or not thp or len(set(thp)) != len(thp) or not set(thp) <= set(THP_MODES):
        raise ValueError(f"thp must be distinct modes among {THP_MODES}, not {thp!r}")
    if memory_limit is not None and (not isinstance(memory_limit, int) or isinstance(memory_limit, bool) or memory_limit <= 0):
        raise ValueError(f"memory_limit must be a positive number of bytes, not {memory_limit!r}")
    return sizes, sparse_sizes


def _plan(sizes: list[int], thp, sparse_sizes: list[int], memory_limit: int, limit_says: str,
          mem_total: int) -> tuple[list[tuple[int, str, int]], list[Skipped]]:
    """Which (size, thp, stride) run, in order, and which are skipped and why."""
    thp_enabled = thp_setting("enabled")
    todo, skipped = [], []
    wanted = [(size, mode, PAGE_SIZE) for size in sizes for mode in thp]
    for size, mode, stride in wanted + [(size, "off", TABLE_SPAN) for size in sparse_sizes]:
        if memory_needed(size, stride) > memory_limit:
            reason = (f"needs {memory_needed(size, stride) / GiB:.2f} GiB (pages written and page tables), "
                      f"more than the limit of {memory_limit / GiB:.2f} GiB ({limit_says})")
        elif size + TABLE_SPAN > mem_total:
            reason = f"a mapping of {format_size(size)} is more than MemTotal, which Linux may refuse to map"
        elif mode == "on" and thp_enabled in (None, "never"):
            reason = f"transparent huge pages are {thp_enabled or 'not built'} on this kernel"
        else:
            todo.append((size, mode, stride))
            continue
        skipped.append(Skipped(size, mode, ("sparse: " if stride == TABLE_SPAN else "") + reason))
    return todo, skipped


def run(sizes: Iterable[int | str] | None = None, repeats: int = 5, thp: tuple[str, ...] = THP_MODES,
        memory_limit: int | None = None, progress: Progress | None = print_progress,
        sparse_sizes: Iterable[int | str] = ()) -> Results:
    """Measure fork at every size (default 64 MiB to 4 GiB, doubling) with THP off and on,
    every page written; then at every sparse size, THP off, one page written per 2 MiB.

    sizes, sparse_sizes: bytes or strings such as "64M", each a multiple of 2 MiB. repeats:
    forks per size; the medians are reported. memory_limit: bytes one size may use (default
    `default_memory_limit()`: half of MemAvailable, or less if the memory cgroup leaves less). progress(done, total, message) is called before the first size and
    after each; None is silent."""
    sizes, sparse_sizes = _check_run_args(sizes, repeats, thp, memory_limit, sparse_sizes)
    require_linux()
    started = time.perf_counter()
    machine = machine_info()
    if memory_limit is None:
        memory_limit, limit_says = default_memory_limit()
    else:
        limit_says = "memory_limit"
    todo, skipped = _plan(sizes, thp, sparse_sizes, memory_limit, limit_says, machine["mem_total_kb"] * KiB)
    report = progress or (lambda done, total, message: None)
    report(0, len(todo), f"{len(todo)} measurements, {repeats} forks each"
           + "".join(f"; skipping {format_size(s.size)} THP {s.thp}: {s.reason}" for s in skipped))
    rows = []
    gc_was_enabled = gc.isenabled()
    # No collection inside a timed region, and none in a child, whose writes to every object's
    # header would make it copy the heap. Python 3.12 and later warn at a fork of a process with
    # threads (Jupyter's kernel has some): the child only exits, so the warning does not apply.
    gc.disable()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            measure_size(WARM_UP_SIZE, "off", 2)  # every path once, untimed
            for done, (size, mode, stride) in enumerate(todo, 1):
                rows.append(measure_size(size, mode, repeats, stride))
                report(done, len(todo), _row_summary(rows[-1]))
    finally:
        if gc_was_enabled:
            gc.enable()
    machine["load_average_end"] = load_average()
    return Results(rows, skipped, machine, repeats, memory_limit, round(time.perf_counter() - started, 3))


def _row_summary(r: Row) -> str:
    return (f"{format_size(r.size)}{', sparse' if r.sparse else ''}, THP {r.thp}: fork {r.fork_ms:.2f} ms, fork+exit+wait {r.fork_wait_ms:.2f} ms, "
            f"VmPTE +{r.vmpte_buffer_kb} kB (ptsim {r.predicted_vmpte_kb} kB), huge pages {r.anon_huge_kb // 1024} MiB")


# -- the cost model --------------------------------------------------------------------------


def nonnegative_lstsq(x, y) -> np.ndarray:
    """The coefficients c >= 0 that minimise |x @ c - y|: least squares with no coefficient
    negative, for the few columns of a cost model. The best such c has some coefficients at 0
    and the others equal to the unconstrained least squares on their own columns (where a
    constraint does not bind, the gradient vanishes), so trying every subset of the columns,
    keeping the fits with no negative coefficient, and taking the one that leaves the least
    residual finds it exactly: 2**k small solves for k columns."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or not 1 <= x.shape[1] <= 8:
        raise ValueError(f"x must be a matrix of 1 to 8 columns with a row per value of y, not {x.shape}")
    best, best_sse = np.zeros(x.shape[1]), float(y @ y)  # every coefficient at 0
    for subset in range(1, 1 << x.shape[1]):
        columns = [j for j in range(x.shape[1]) if subset >> j & 1]
        part, *_ = np.linalg.lstsq(x[:, columns], y, rcond=None)
        if (part < 0).any():
            continue
        coef = np.zeros(x.shape[1])
        coef[columns] = part
        sse = float(((y - x @ coef) ** 2).sum())
        if sse < best_sse * (1 - 1e-12):  # the same residual from more columns is no better
            best, best_sse = coef, sse
    return best


@dataclass(frozen=True)
class CostModel:
    """latency = fixed_ms + ns_per_pte * PTEs copied + us_per_table * tables, fitted with
    every term non-negative."""

    latency: str  # "fork" or "fork_wait"
    fixed_ms: float
    ns_per_pte: float
    us_per_table: float | None  # None: every row had 512 PTEs per table, so the two mix
    r2: float
    points: int
    at_zero: tuple[str, ...] = ()  # terms at their bound, 0: freeing them would make some cost negative

    def predict_ms(self, ptes, tables):
        """The model's latency in ms for arrays (or numbers) of PTEs and tables."""
        ms = self.fixed_ms + self.ns_per_pte * np.asarray(ptes) / 1e6
        if self.us_per_table is not None:
            ms = ms + self.us_per_table * np.asarray(tables) / 1e3
        return ms

    def __str__(self) -> str:
        terms = [f"{self.fixed_ms:.3f} ms", f"{self.ns_per_pte:.1f} ns per PTE"]
        if self.us_per_table is not None:
            terms.append(f"{self.us_per_table:.2f} us per table")
        held = f", held at 0: {', '.join(self.at_zero)}" if self.at_zero else ""
        return f"{LATENCIES[self.latency]} = {' + '.join(terms)}  (R^2 {self.r2:.4f}, {self.points} rows{held})"


COST_TERMS = ("fixed", "per PTE", "per table")


def fit(results: Results, latency: str = "fork") -> CostModel:
    """Least squares over the rows' medians, no cost negative (`nonnegative_lstsq`): a cost
    that least squares alone would make negative is held at 0 and named in `at_zero`. The
    largest rows weigh most, so the per-PTE cost is the slope of the large sizes, where it
    dominates; the fixed cost then fits the small rows less well (see the R^2). The per-table
    cost is fitted only when some rows have other than 512 PTEs per table (huge pages, or
    sparse rows): otherwise the two costs cannot be told apart, and the per-PTE cost includes
    a 512th of the per-table one."""
    y = results.latency_ms(latency)
    if len(y) < 2:
        raise ValueError(f"results must have at least 2 measured rows to fit, not {len(y)}")
    ptes = np.array([r.ptes for r in results.rows], dtype=float)
    tables = np.array([r.tables for r in results.rows], dtype=float)
    x = np.column_stack([np.ones_like(y), ptes / 1e6, tables / 1e3])  # ms per million PTEs = ns per PTE
    if len(y) < 3 or np.linalg.matrix_rank(x) < 3:
        x = x[:, :2]
    coef = nonnegative_lstsq(x, y)
    residual = y - x @ coef
    spread = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float((residual**2).sum()) / spread if spread else 1.0
    per_table = float(coef[2]) if len(coef) == 3 else None
    at_zero = tuple(term for term, c in zip(COST_TERMS, coef) if c == 0)
    return CostModel(latency, float(coef[0]), float(coef[1]), per_table, r2, len(y), at_zero)


# -- saving and loading ----------------------------------------------------------------------

_PARSE = {"int": int, "float": float, "str": str, "list[int]": lambda text: [int(w) for w in text.split()]}
ROW_FIELDS = [(f.name, _PARSE[f.type]) for f in dataclasses.fields(Row)]


def save(results: Results, path: str | os.PathLike = "artifacts/measure") -> tuple[Path, Path]:
    """Write the results to directory `path` as fork_cost.csv and fork_cost.json; return both
    paths. The CSV has a row per measurement, the rest as `# key: JSON` comment lines first
    (pandas.read_csv(path, comment="#") reads the rows)."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    header = {"machine": results.machine, "repeats": results.repeats,
              "memory_limit": results.memory_limit, "elapsed_s": results.elapsed_s}
    rows = [{**dataclasses.asdict(r), **{name: getattr(r, name) for name in DERIVED}} for r in results.rows]
    skipped = [dataclasses.asdict(s) for s in results.skipped]
    json_path, csv_path = out / f"{FILE_STEM}.json", out / f"{FILE_STEM}.csv"
    json_path.write_text(json.dumps({**header, "rows": rows, "skipped": skipped}, indent=1) + "\n")
    with open(csv_path, "w", newline="") as f:
        for key, value in header.items():
            f.write(f"# {key}: {json.dumps(value)}\n")
        for s in skipped:
            f.write(f"# skipped: {json.dumps(s)}\n")
        writer = csv.DictWriter(f, fieldnames=[name for name, _ in ROW_FIELDS] + list(DERIVED))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
    return csv_path, json_path


def load(path: str | os.PathLike) -> Results:
    """Results saved by `save`: a directory (its fork_cost.json), a .json or a .csv file."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{FILE_STEM}.json"
    if path.suffix not in (".json", ".csv"):
        raise ValueError(f"path must be a directory, a .json or a .csv file, not {str(path)!r}")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        rows = [Row(**{name: r[name] for name, _ in ROW_FIELDS if name in r}) for r in data.pop("rows")]
    else:
        data, lines = {"skipped": []}, path.read_text().splitlines()
        comments = [line[2:] for line in lines if line.startswith("# ")]
        for key, _, value in (c.partition(": ") for c in comments):
            if key == "skipped":
                data["skipped"].append(json.loads(value))
            else:
                data[key] = json.loads(value)
        table = csv.DictReader(line for line in lines if not line.startswith("#"))
        rows = [Row(**{name: parse(r[name]) for name, parse in ROW_FIELDS if r.get(name) is not None})
                for r in table]
    skipped = [Skipped(**s) for s in data.pop("skipped")]
    return Results(rows, skipped, **data)


# -- showing ---------------------------------------------------------------------------------


def format_table(results: Results) -> str:
    """The medians and page-table sizes, a line per row, then what was skipped and why."""
    lines = [f"median of {results.repeats} forks; written: every page, or one per 2 MiB (sparse); "
             "huge: MiB of the buffer in huge pages;",
             "PTEs and tables: what fork copies for the buffer (tables: copied, or deposited beside a huge PMD); VmPTE in kB",
             f"{'size':>8} {'written':>7} {'THP':>3} {'fork ms':>8} {'+exit+wait':>10} {'huge':>5} {'PTEs':>7} {'tables':>6} "
             f"{'VmPTE buffer':>12} {'ptsim':>6} {'parent':>7} {'child':>6}"]
    for r in results.rows:
        lines.append(f"{format_size(r.size):>8} {'sparse' if r.sparse else 'every':>7} {r.thp:>3} {r.fork_ms:8.2f} "
                     f"{r.fork_wait_ms:10.2f} {r.anon_huge_kb // 1024:5} {r.ptes:7} {r.tables:6} "
                     f"{r.vmpte_buffer_kb:12} {r.predicted_vmpte_kb:6} {r.vmpte_parent_kb:7} {r.vmpte_child_kb:6}")
    lines += [f"skipped {format_size(s.size)} THP {s.thp}: {s.reason}" for s in results.skipped]
    return "\n".join(lines)


def plot(results: Results, model: CostModel | None = None):
    """A Figure of the book's width: fork latencies against size, every page written with THP
    off and on and sparse (and `model`'s line, if given), and VmPTE against size, measured
    beside ptsim's prediction; one legend under both."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullLocator

    from ..draw import style

    fig, (ax_time, ax_pte) = plt.subplots(1, 2, figsize=(style.WIDTH, 5.0), layout="constrained")
    series = [("every page, THP off", "o", style.BLUE, lambda r: r.thp == "off" and not r.sparse),
              ("every page, THP on", "s", style.ORANGE, lambda r: r.thp == "on"),
              ("one page per 2 MiB, THP off", "^", style.GREEN, lambda r: r.sparse)]
    handles = []
    for name, marker, color, chosen in series:
        rows = [r for r in results.rows if chosen(r)]
        if not rows:
            continue
        handles.append(Line2D([], [], marker=marker, color=color, linestyle="none", label=name))
        mib = [r.size / MiB for r in rows]
        ax_time.plot(mib, [r.fork_ms for r in rows], marker=marker, color=color, label=f"fork, {name}")
        ax_time.plot(mib, [r.fork_wait_ms for r in rows], marker=marker, color=color, linestyle="--",
                     markerfacecolor="none", label=f"fork+exit+wait, {name}")
        if model is not None:
            ax_time.plot(mib, model.predict_ms([r.ptes for r in rows], [r.tables for r in rows]), color=style.BLACK,
                         linewidth=0.8, label=f"fitted {LATENCIES[model.latency]}")
        ax_pte.plot(mib, [r.vmpte_buffer_kb for r in rows], marker=marker, color=color, linestyle="none",
                    markersize=9 if chosen is series[0][3] else 5, label=f"measured: what the buffer added, {name}")
    by_size = {r.size: r.predicted_vmpte_kb for r in results.rows}
    ax_pte.plot([s / MiB for s in sorted(by_size)], [by_size[s] for s in sorted(by_size)], color=style.BLACK,
                linewidth=1.2, linestyle=":", label="ptsim: VmPTE of the same mapping")
    handles += [Line2D([], [], color=style.BLACK, marker="o", label="fork (left)"),
                Line2D([], [], color=style.BLACK, marker="o", markerfacecolor="none", linestyle="--",
                       label="fork+exit+wait (left)")]
    if model is not None:
        handles.append(Line2D([], [], color=style.BLACK, linewidth=0.8, label=f"fitted {LATENCIES[model.latency]} (left)"))
    handles.append(Line2D([], [], color=style.BLACK, linewidth=1.2, linestyle=":", label="ptsim's VmPTE (right)"))

    def plain(value, _):
        return f"{value:g}"

    def twos_and_fives(value, _):
        return f"{value:g}" if round(value / 10 ** np.floor(np.log10(value))) in (2, 5) else ""

    for ax, ylabel, title in ((ax_time, "ms (median)", "fork on this machine"),
                              (ax_pte, "VmPTE the buffer added, kB", "page tables: measured and predicted")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks([s / MiB for s in sorted(by_size)], [format_size(s) for s in sorted(by_size)], rotation=30)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(plain))
        ax.yaxis.set_minor_formatter(FuncFormatter(twos_and_fives))
        ax.set_xlabel("size of the buffer")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return fig


# -- the command -----------------------------------------------------------------------------


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str] | None = None) -> Results:
    """The command: echo the arguments and the machine, measure, print the table and the fits,
    save the CSV, JSON and a PNG of `plot` in --out."""
    parser = argparse.ArgumentParser(prog="python -m ptsim.host.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-size", type=_size_arg, default=DEFAULT_MIN_SIZE, help="smallest size (default 64M)")
    parser.add_argument("--max-size", type=_size_arg, default=DEFAULT_MAX_SIZE,
                        help="largest size; the sizes double from the smallest (default 4G)")
    parser.add_argument("--repeats", type=int, default=5, help="forks per size; the median is printed (default 5)")
    parser.add_argument("--thp", default="off,on", help="THP modes, comma-separated (default off,on)")
    parser.add_argument("--sparse", default="",
                        help="sizes measured again with one page written per 2 MiB, THP off, comma-separated "
                             "(such as 1G,2G,4G; default none)")
    parser.add_argument("--memory-limit", type=_size_arg, help="bytes one size may use (default half of MemAvailable, or what the memory cgroup "
                             "leaves if that is less)")
    parser.add_argument("--out", default="artifacts/measure",
                        help="directory for the CSV, JSON and PNG (default artifacts/measure)")
    args = parser.parse_args(argv)
    for name, value in vars(args).items():
        print(f"ARG {name} {format_size(value) if isinstance(value, int) and name != 'repeats' else value}")
    try:
        sizes = default_sizes(args.min_size, args.max_size)
        require_linux()
        m = machine_info()
        print(f"machine: Linux {m['kernel']} {m['machine']}, {m['cpus']} CPUs ({m['cpu_model']}), "
              f"{m['mem_total_kb'] / (1 << 20):.1f} GiB, MemAvailable {m['mem_available_kb'] / (1 << 20):.1f} GiB, "
              f"THP enabled={m['thp_enabled']} defrag={m['thp_defrag']}")
        print(f"python {m['python']}, numpy {m['numpy']}, load average {m['load_average']}\n", flush=True)
        sparse = [parse_size(size) for size in args.sparse.split(",") if size]
        results = run(sizes, args.repeats, tuple(args.thp.split(",")), args.memory_limit, sparse_sizes=sparse)
    except (ValueError, RuntimeError) as e:
        parser.error(str(e))
    print(format_table(results))
    print()
    if len(results.rows) >= 2:
        for latency in LATENCIES:
            print(fit(results, latency))
        print(f"(the book's machine, Linux 6.18, 2026-11-25: about {BOOK_MACHINE_NS_PER_PTE} ns per PTE for fork)")
    saved = list(save(results, args.out))
    if results.rows:
        figure = plot(results, fit(results) if len(results.rows) >= 2 else None)
        saved.append(Path(args.out) / f"{FILE_STEM}.png")
        figure.savefig(saved[-1], dpi=100)
        figure.clf()
    print(f"\nthe run took {results.elapsed_s:.1f} s, load average at the end {results.machine['load_average_end']}")
    print("saved " + ", ".join(map(str, saved)))
    return results


if __name__ == "__main__":
    main()
