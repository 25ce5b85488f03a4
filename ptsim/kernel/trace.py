"""What the kernel did: structured events, and counters.

Every kernel function reports each step it takes to a table or a frame as an `Event`, named by
the kernel function that took it. Counters are always kept; events only while someone listens
(`Machine.trace()`), as with ftrace, so that a big fork is not slowed by recording it.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

# Counter names, one per thing the book measures.
COUNTERS = (
    "ptes_copied",  # entries copied from one table into another (fork, unshare)
    "ptes_wrprotected",  # private-writable entries made read-only for copy-on-write
    "tables_allocated",
    "tables_shared",  # a use count went up at fork instead of a copy
    "tables_unshared",  # a private copy of a shared table was made
    "tables_freed",
    "pages_allocated",
    "pages_copied",  # copy-on-write copies
    "pages_reused",  # copy-on-write faults that found the page no longer shared
    "pages_freed",
    "pages_swapped_out",
    "tlb_flushes",
    "tlb_flushes_all",  # of them, flushes of every address space (flush_tlb_all)
    "fault_anon",  # first write to an untouched private page
    "fault_zero",  # first read of an untouched private page: the zero page is mapped
    "fault_shmem",  # a MAP_SHARED page mapped from its shmem object
    "fault_wp_copy",
    "fault_wp_reuse",
    "fault_spurious",  # the entry already allowed the access (stale TLB)
    "fault_upper_wp",  # a write only a read-only upper entry forbade (policy upper_wp)
    "fault_swapin",  # a major fault: a page read back from swap
)


@dataclass(frozen=True)
class Event:
    """One step: `func` did `action` to a table or frame on behalf of process `pid`."""

    func: str  # the kernel function, by its Linux name: "copy_page_range", "do_wp_page", ...
    action: str  # what it did: "alloc_table", "share_table", "unshare_table", "copy_page", ...
    pid: int | None = None
    addr: int | None = None  # first virtual address the step concerns
    level: int | None = None  # table level (0 = root) for table steps
    table: int | None = None  # frame of the table acted on
    frame: int | None = None  # data frame, or the new table of an unshare
    count: int | None = None  # a use count after the step, or how many entries it covered
    detail: dict = field(default_factory=dict, compare=False)


class Tracer:
    """Counters, always; events, for every open trace.

    Each open trace is a list in `listeners`, and every event goes to every one of them, so
    traces may nest, overlap and close in any order: each gets exactly the events reported
    while it was open.
    """

    def __init__(self):
        self.counters: Counter = Counter()
        self.listeners: list[list[Event]] = []  # the open traces, oldest first

    @property
    def events(self) -> list[Event] | None:
        """The newest open trace, None while nobody listens: kernel functions ask `events is
        not None` before building events. Read only; `mark` and `rollback` undo events."""
        return self.listeners[-1] if self.listeners else None

    def emit(self, func: str, action: str, **fields) -> None:
        if self.listeners:
            event = Event(func, action, **fields)
            for sink in self.listeners:
                sink.append(event)

    def count(self, name: str, n: int = 1) -> None:
        assert name in COUNTERS, name
        self.counters[name] += n

    @contextmanager
    def listening(self, sink: list[Event]):
        """Give `sink` (a list, or anything with append) every event until the block ends."""
        self.listeners.append(sink)
        try:
            yield sink
        finally:
            # By identity: list.remove compares by value, and two traces may hold equal lists.
            self.listeners = [s for s in self.listeners if s is not sink]

    def mark(self):
        """How far each open trace has got, for `rollback`."""
        return [(sink, len(sink)) for sink in self.listeners]

    def rollback(self, mark) -> None:
        """Drop the events reported since `mark`, from every trace that was open then."""
        for sink, n in mark:
            del sink[n:]
