"""System calls: argument checks first, then the mm work, all or nothing.

Each call either raises before it changes anything (ValueError for a bad argument,
SegmentationFault for an access the mappings forbid) or runs inside a transaction that an
OutOfMemory rolls back.
"""

from __future__ import annotations

from ..errors import ProcessExited, SegmentationFault
from ..hardware import PageFault
from .core import MAPPED, Kernel, Task
from .fork import dup_mmap
from .memory import (access_error, change_protection, do_user_addr_fault, exit_mmap, release_vma, tlb_finish_mmu, unmap_region,
                     unshare_pte_tables, zap_page_range)
from .mm import PROTS, VMA, Shmem

MADVICE = ("dontneed",)


def check_alive(task: Task) -> None:
    if task.exited:
        raise ProcessExited(f"process {task.pid} has exited")


def _range(k: Kernel, addr, length, *, low: int = 0) -> tuple[int, int]:
    """[start, end) of an address range argument: addr aligned, length > 0 rounded up to pages."""
    arch = k.arch
    if not isinstance(addr, int) or isinstance(addr, bool):
        raise ValueError(f"addr must be an int, not {type(addr).__name__}")
    if not isinstance(length, int) or isinstance(length, bool):
        raise ValueError(f"length must be an int, not {type(length).__name__}")
    if addr % arch.page_size:
        raise ValueError(f"addr {addr:#x} is not aligned to the {arch.page_size}-byte page")
    if length <= 0:
        raise ValueError(f"length must be positive, not {length}")
    end = addr + (-(-length // arch.page_size) * arch.page_size)
    if addr < low or end > arch.task_size:
        raise ValueError(f"addr, length: [{addr:#x}, {end:#x}) is outside user space [{low:#x}, {arch.task_size:#x})")
    return addr, end


def _prot(prot) -> str:
    if prot not in PROTS:
        raise ValueError(f"prot must be one of {PROTS!r}, not {prot!r}")
    return prot


def _all_mapped(mm, start: int, end: int, call: str) -> None:
    covered = start
    for vma in mm.vmas_in(start, end):
        if vma.start > covered:
            break
        covered = vma.end
    if covered < end:
        raise ValueError(f"addr, length: {call} of [{start:#x}, {end:#x}) covers unmapped memory at {covered:#x} (ENOMEM)")


def get_unmapped_area(k: Kernel, mm, length: int, shared: bool) -> int:
    """Where mmap puts a mapping it is given no address for: top-down, as Linux does.

    A private mapping whose length is a whole number of last-level table spans goes on a
    span boundary on a 64-bit geometry (`arch.thp_mmap_align`), where a transparent huge page
    could map it, as Linux does since 6.7 (thp_get_unmapped_area): the highest free range
    with room for one span more, its start rounded down. Failing that, or for any other
    mapping, the highest free range that fits.
    """
    align = k.arch.thp_mmap_align
    if align and not shared and length % align == 0:
        top = _free_range_top(k, mm, length + align)
        if top is not None:
            return (top - length) & ~(align - 1)
    top = _free_range_top(k, mm, length)
    if top is None:
        raise ValueError(f"length: no free range of {length:#x} bytes left in the address space")
    return top - length


def _free_range_top(k: Kernel, mm, length: int) -> int | None:
    """The end of the highest free range below task_size that `length` bytes fit in."""
    top = k.arch.task_size
    for vma in reversed(mm.vmas):
        if vma.end <= top - length:
            return top
        top = min(top, vma.start)
    return top if top - length >= k.arch.mmap_min_addr else None


def sys_mmap(k: Kernel, task: Task, addr, length, prot, shared) -> int:
    check_alive(task)
    prot = _prot(prot)
    if not isinstance(shared, bool):
        raise ValueError(f"shared must be True or False, not {shared!r}")
    mm = task.mm
    if addr is None:
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            raise ValueError(f"length must be a positive int, not {length!r}")
        addr = get_unmapped_area(k, mm, -(-length // k.arch.page_size) * k.arch.page_size, shared)
    start, end = _range(k, addr, length, low=k.arch.mmap_min_addr)
    with k.transaction(mm, start, end, 2):  # MAP_FIXED over part of a shared table unshares it
        _do_munmap(k, mm, start, end, "do_mmap")
        unshare_pte_tables(k, mm, start, end, "do_mmap")  # a table the new mapping shares a part of
        shmem = None
        if shared:
            shmem = Shmem(k._next_shmem, nr_vmas=1)
            k._next_shmem += 1
        mm.insert_vma(VMA(start, end, prot, shmem, account=not shared and "w" in prot))
        mm.vma_merge(start, end, k.arch.page_shift)
    k.tracer.emit("do_mmap", "new_vma", pid=mm.owner, addr=start, count=(end - start) >> k.arch.page_shift)
    return start


def sys_munmap(k: Kernel, task: Task, addr, length) -> None:
    check_alive(task)
    start, end = _range(k, addr, length)
    with k.transaction(task.mm, start, end, 2):  # only the two end tables can be partial
        _do_munmap(k, task.mm, start, end, "do_munmap")


def _do_munmap(k: Kernel, mm, start: int, end: int, func: str) -> None:
    if not mm.vmas_in(start, end):
        return
    mm.split_vma(start, k.arch.page_shift)
    mm.split_vma(end, k.arch.page_shift)
    gone = mm.vmas_in(start, end)
    mm.vmas = [v for v in mm.vmas if v not in gone]
    unmap_region(k, mm, start, end, func)
    for vma in gone:
        release_vma(k, vma)


def sys_mprotect(k: Kernel, task: Task, addr, length, prot) -> None:
    check_alive(task)
    start, end = _range(k, addr, length)
    prot = _prot(prot)
    mm = task.mm
    _all_mapped(mm, start, end, "mprotect")
    with k.transaction(mm, start, end, k.tables_spanned(start, end)):  # each table may be unshared
        mm.split_vma(start, k.arch.page_shift)
        mm.split_vma(end, k.arch.page_shift)
        for vma in mm.vmas_in(start, end):
            if vma.prot != prot and not vma.shared:
                # VM_ACCOUNT: charged when private memory becomes writable, and given back when
                # it stops being writable before it ever held a page (mprotect_fixup)
                vma.account = "w" in prot or (vma.account and vma.anon_vma)
            vma.prot = prot
            change_protection(k, mm, vma, vma.start, vma.end)
        mm.vma_merge(start, end, k.arch.page_shift)


def sys_madvise(k: Kernel, task: Task, addr, length, advice) -> None:
    check_alive(task)
    start, end = _range(k, addr, length)
    if advice not in MADVICE:
        raise ValueError(f"advice must be one of {MADVICE!r}, not {advice!r}")
    mm = task.mm
    _all_mapped(mm, start, end, "madvise")
    with k.transaction(mm, start, end, 2):
        # MADV_DONTNEED: drop the pages, keep the VMAs and tables. Private memory reads back
        # as zeroes; MAP_SHARED memory keeps its pages in the shmem object.
        tlb = zap_page_range(k, mm, start, end, "madvise_dontneed")
        tlb_finish_mmu(k, mm, start, end, tlb, "madvise_dontneed")


def sys_fork(k: Kernel, task: Task) -> Task:
    check_alive(task)
    mm = dup_mmap(k, k.new_pid(take=False), task.mm)
    child = Task(k.new_pid(), mm, ppid=task.pid)
    k.tasks[child.pid] = child
    return child


def sys_exit(k: Kernel, task: Task) -> None:
    check_alive(task)
    mm, task.mm = task.mm, None
    exit_mmap(k, mm)


def sys_execve(k: Kernel, task: Task) -> None:
    """A fresh, empty address space; the old one goes as at exit (fork + exec: sharing rule 18)."""
    check_alive(task)
    new = k.mm_alloc(task.pid)  # the one allocation comes before anything is torn down
    old, task.mm = task.mm, new
    exit_mmap(k, old)


def access_user(k: Kernel, task: Task, addr, length, write: bool) -> list[tuple[int, int]]:
    """Make every page of [addr, addr+length) accessible to the CPU, faulting as it does.

    Returns (physical address, bytes) runs. The whole range is checked against the VMAs first,
    so a SegmentationFault changes nothing; then each page is touched through the MMU, and
    each page fault goes to the fault handler, as a user-mode load or store would.
    """
    check_alive(task)
    if not isinstance(addr, int) or isinstance(addr, bool) or addr < 0:
        raise ValueError(f"addr must be a non-negative int, not {addr!r}")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError(f"length must be a non-negative int, not {length!r}")
    if length == 0:
        return []
    mm, arch = task.mm, k.arch
    end = addr + length
    page = addr & ~(arch.page_size - 1)
    pages = range(page, end, arch.page_size)
    for va in pages:
        if va >= arch.task_size:
            raise SegmentationFault(max(va, addr), "address beyond user space")
        reason = access_error(mm.find_vma(va), write)
        if reason is not None:
            raise SegmentationFault(max(va, addr), reason)
    runs = []
    frames_bound = len(pages) + k.tables_spanned(page, end) + (end - 1) // arch.pte_span - page // arch.pte_span + 1
    with k.transaction(mm, page, end, frames_bound):
        for va in pages:
            lo, hi = max(va, addr), min(va + arch.page_size, end)
            for _ in range(3):  # a fault, then at most a spurious one
                try:
                    runs.append((k.mmu.access(mm.pgd, mm.pcid, lo, write), hi - lo))
                    break
                except PageFault as fault:
                    do_user_addr_fault(k, task, fault)
            else:
                raise RuntimeError(f"the fault at {lo:#x} does not resolve")
    return runs


def translate(k: Kernel, task: Task, vaddr) -> int | None:
    """The physical address `vaddr` maps to, read from the tables with no side effects."""
    check_alive(task)
    if not isinstance(vaddr, int) or isinstance(vaddr, bool) or not 0 <= vaddr < k.arch.task_size:
        raise ValueError(f"vaddr must be an int in [0, {k.arch.task_size:#x}), not {vaddr!r}")
    entry = k.follow_pte(task.mm, vaddr)
    if not entry & MAPPED:
        return None
    return (k.entry_pfn(entry) << k.arch.page_shift) | (vaddr & (k.arch.page_size - 1))
