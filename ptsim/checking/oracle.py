"""An independent model of what the mm calls mean to a process, with no page tables at all.

It knows pages and who maps them, nothing of tables, entries, frames or TLBs: a process maps a
virtual page to a `Page` object (or to ZERO), writable or not. Written separately from the
kernel, from the rules of Linux's behaviour, so that a bug in the kernel's tables shows up as
a difference: in the bytes read, in a SegmentationFault, in which pages two processes share,
and, against the `copy` policy, in every minor-fault count, which follows these rules:

- the first read of an untouched private page maps the zero page (one fault), the first
  write allocates a page (one fault), a write to a read-only mapping is one fault that copies
  the page, or reuses it when nobody else maps it;
- MAP_SHARED memory is mapped writable when the mapping is, even on a read fault;
- fork copies the mappings of private VMAs that have ever held a page of their own (Linux's
  anon_vma), read-only in both; the child faults everything else in again;
- after an mmap or mprotect, neighbouring areas merge as Linux's VMAs do (the same prot and
  VM_ACCOUNT, the same shmem object at consecutive offsets, and for private memory both or
  neither with a page history from before a fork); an area that never held a page of its own
  merged into one that has is copied at fork, zero-page mappings and all. VM_ACCOUNT is set
  on private memory mapped or made writable, and cleared when an mprotect makes it
  read-only before it ever held a page;
- mprotect to "rw" makes a private mapping writable only where the page is exclusively this
  process's since its last fork or copy (PG_anon_exclusive);
- mmap given no address takes the highest gap that fits; a private mapping a whole number of
  `thp_align` bytes long (0: never) starts on such a boundary, in the highest gap with room
  for `thp_align` bytes more, if there is one (Linux's THP alignment of anonymous memory).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import count

from ..errors import ProcessExited, SegmentationFault


class Page:
    _ids = count()

    def __init__(self, size: int, data: bytes | None = None):
        self.id = next(Page._ids)
        self.data = bytearray(data if data is not None else size)
        self.exclusive = True


@dataclass
class Mapping:
    page: Page | None  # None: the zero page
    writable: bool


@dataclass
class Area:
    start: int
    end: int
    prot: str
    shmem: dict | None  # page offset -> Page, shared by every area that maps the same object
    pgoff: int = 0
    anon_vma: bool = False
    anon_vma_forked: bool = False  # its anon_vma came from the parent at fork
    account: bool = False  # VM_ACCOUNT: private, made writable, and not given back since


@dataclass
class OracleProcess:
    pid: int
    areas: list[Area] = field(default_factory=list)
    maps: dict[int, Mapping] = field(default_factory=dict)  # virtual page number -> mapping
    minflt: int = 0
    alive: bool = True


class Oracle:
    def __init__(self, page_size: int, task_size: int, mmap_min_addr: int, thp_align: int = 0):
        self.page_size, self.task_size, self.mmap_min_addr = page_size, task_size, mmap_min_addr
        self.thp_align = thp_align
        self.procs: dict[int, OracleProcess] = {}
        self._pids = count(1)

    # -- processes -----------------------------------------------------------------------

    def spawn(self) -> int:
        pid = next(self._pids)
        self.procs[pid] = OracleProcess(pid)
        return pid

    def _proc(self, pid: int) -> OracleProcess:
        proc = self.procs[pid]
        if not proc.alive:
            raise ProcessExited(f"process {pid} has exited")
        return proc

    def fork(self, pid: int) -> int:
        parent = self._proc(pid)
        child = self.procs[self.spawn()]
        for area in parent.areas:
            child.areas.append(dataclasses.replace(area, anon_vma_forked=area.anon_vma))
            if area.shmem is not None or not area.anon_vma:
                continue
            for vpn in self._vpns(area.start, area.end):
                mapping = parent.maps.get(vpn)
                if mapping is not None:
                    mapping.writable = False
                    if mapping.page is not None:
                        mapping.page.exclusive = False
                    child.maps[vpn] = Mapping(mapping.page, False)
        return child.pid

    def exit(self, pid: int) -> None:
        self._proc(pid).alive = False
        self.procs[pid].areas, self.procs[pid].maps = [], {}

    def exec(self, pid: int) -> None:
        proc = self._proc(pid)
        proc.areas, proc.maps = [], {}

    # -- mappings ------------------------------------------------------------------------

    def _vpns(self, start: int, end: int) -> range:
        return range(start // self.page_size, -(-end // self.page_size))

    def _area(self, proc: OracleProcess, addr: int) -> Area | None:
        return next((a for a in proc.areas if a.start <= addr < a.end), None)

    def _split(self, proc: OracleProcess, addr: int) -> None:
        area = self._area(proc, addr)
        if area is None or area.start == addr:
            return
        tail = dataclasses.replace(area, start=addr, pgoff=area.pgoff + (addr - area.start) // self.page_size)
        area.end = addr
        proc.areas.append(tail)
        proc.areas.sort(key=lambda a: a.start)

    def _range(self, addr, length, low: int = 0) -> tuple[int, int]:
        if not isinstance(addr, int) or not isinstance(length, int) or addr % self.page_size or length <= 0:
            raise ValueError("addr, length")
        end = addr + -(-length // self.page_size) * self.page_size
        if addr < low or end > self.task_size:
            raise ValueError("addr, length")
        return addr, end

    def mmap(self, pid: int, addr, length: int, prot: str, shared: bool) -> int:
        proc = self._proc(pid)
        size = -(-length // self.page_size) * self.page_size
        if addr is None:
            addr = self._place(proc, size, shared)
        start, end = self._range(addr, length, self.mmap_min_addr)
        self._unmap(proc, start, end)
        proc.areas.append(Area(start, end, prot, {} if shared else None, account=not shared and "w" in prot))
        proc.areas.sort(key=lambda a: a.start)
        self._merge(proc, start, end)
        return start

    def _place(self, proc: OracleProcess, size: int, shared: bool) -> int:
        """The address mmap picks for `size` bytes."""
        bounds = sorted([(a.start, a.end) for a in proc.areas] + [(self.task_size, self.task_size)])
        gaps = [(lo, hi) for (_, lo), (hi, _) in zip([(0, self.mmap_min_addr), *bounds], bounds) if hi > lo]
        align = self.thp_align
        if align and not shared and size % align == 0:
            roomy = [hi for lo, hi in gaps if hi - lo >= size + align]
            if roomy:
                return (max(roomy) - size) // align * align
        fits = [hi for lo, hi in gaps if hi - lo >= size]
        if not fits:
            raise ValueError("length: no gap fits")
        return max(fits) - size

    def _merge(self, proc: OracleProcess, start: int, end: int) -> None:
        """Join the areas that meet at an address in [start, end], where Linux would."""
        areas: list[Area] = []
        for area in proc.areas:
            last = areas[-1] if areas else None
            if (
                last is not None
                and last.end == area.start
                and start <= area.start <= end
                and (last.prot, last.account) == (area.prot, area.account)
                and last.shmem is area.shmem
                and (
                    last.pgoff + (last.end - last.start) // self.page_size == area.pgoff
                    if area.shmem is not None
                    else last.anon_vma_forked == area.anon_vma_forked
                )
            ):
                last.end = area.end
                last.anon_vma |= area.anon_vma
            else:
                areas.append(area)
        proc.areas = areas

    def _unmap(self, proc: OracleProcess, start: int, end: int) -> None:
        self._split(proc, start)
        self._split(proc, end)
        proc.areas = [a for a in proc.areas if not (start <= a.start and a.end <= end)]
        self._drop(proc, start, end)

    def _drop(self, proc: OracleProcess, start: int, end: int) -> None:
        for vpn in self._vpns(start, end):
            proc.maps.pop(vpn, None)

    def munmap(self, pid: int, addr: int, length: int) -> None:
        proc = self._proc(pid)
        self._unmap(proc, *self._range(addr, length))

    def _all_mapped(self, proc: OracleProcess, start: int, end: int) -> None:
        if any(self._area(proc, vpn * self.page_size) is None for vpn in self._vpns(start, end)):
            raise ValueError("addr, length: not all mapped")

    def mprotect(self, pid: int, addr: int, length: int, prot: str) -> None:
        proc = self._proc(pid)
        start, end = self._range(addr, length)
        self._all_mapped(proc, start, end)
        self._split(proc, start)
        self._split(proc, end)
        for area in proc.areas:
            if start <= area.start and area.end <= end:
                if area.prot != prot and area.shmem is None:
                    area.account = "w" in prot or (area.account and area.anon_vma)
                area.prot = prot
        for vpn in self._vpns(start, end):
            mapping = proc.maps.get(vpn)
            if mapping is not None:
                shared = self._area(proc, vpn * self.page_size).shmem is not None
                mapping.writable = prot == "rw" and (shared or (mapping.page is not None and mapping.page.exclusive))
        self._merge(proc, start, end)

    def madvise(self, pid: int, addr: int, length: int, advice: str) -> None:
        proc = self._proc(pid)
        start, end = self._range(addr, length)
        self._all_mapped(proc, start, end)
        self._drop(proc, start, end)

    # -- accesses ------------------------------------------------------------------------

    def _mappers(self, page: Page) -> int:
        return sum(1 for p in self.procs.values() for m in p.maps.values() if m.page is page)

    def _fault_in(self, proc: OracleProcess, vpn: int, write: bool) -> Mapping:
        area = self._area(proc, vpn * self.page_size)
        mapping = proc.maps.get(vpn)
        if mapping is not None and (mapping.writable or not write):
            return mapping
        proc.minflt += 1
        if area.shmem is not None:
            offset = area.pgoff + vpn - area.start // self.page_size
            page = area.shmem.setdefault(offset, Page(self.page_size))
            mapping = proc.maps[vpn] = Mapping(page, "w" in area.prot)
        elif mapping is None and not write:
            mapping = proc.maps[vpn] = Mapping(None, False)
        elif mapping is None or mapping.page is None:
            area.anon_vma = True
            mapping = proc.maps[vpn] = Mapping(Page(self.page_size), True)
        elif mapping.page.exclusive or self._mappers(mapping.page) == 1:
            mapping.page.exclusive = True
            mapping.writable = True
        else:
            area.anon_vma = True
            mapping = proc.maps[vpn] = Mapping(Page(self.page_size, mapping.page.data), True)
        return mapping

    def _access(self, pid: int, addr: int, length: int, write: bool):
        proc = self._proc(pid)
        if length == 0:
            return []
        for vpn in self._vpns(addr, addr + length):
            va = max(vpn * self.page_size, addr)
            area = self._area(proc, va) if va < self.task_size else None
            if area is None or ("w" not in area.prot if write else "r" not in area.prot):
                raise SegmentationFault(va, "oracle")
        runs = []
        for vpn in self._vpns(addr, addr + length):
            lo, hi = max(vpn * self.page_size, addr), min((vpn + 1) * self.page_size, addr + length)
            runs.append((self._fault_in(proc, vpn, write), lo - vpn * self.page_size, hi - lo))
        return runs

    def read(self, pid: int, addr: int, length: int) -> bytes:
        return b"".join(bytes(m.page.data[o : o + n]) if m.page else bytes(n) for m, o, n in self._access(pid, addr, length, False))

    def write(self, pid: int, addr: int, data: bytes) -> None:
        done = 0
        for mapping, offset, n in self._access(pid, addr, len(data), True):
            mapping.page.data[offset : offset + n] = data[done : done + n]
            done += n

    # -- observations ---------------------------------------------------------------------

    def page_of(self, pid: int, vpn: int):
        """What (pid, vpn) maps: a page id, "zero", or None."""
        mapping = self.procs[pid].maps.get(vpn)
        if mapping is None:
            return None
        return "zero" if mapping.page is None else mapping.page.id

    def rss(self, pid: int) -> int:
        return sum(1 for m in self.procs[pid].maps.values() if m.page is not None)

    def vm_size(self, pid: int) -> int:
        return sum(a.end - a.start for a in self.procs[pid].areas)
