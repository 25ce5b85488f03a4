"""The public face: a Machine with a kernel, and the Processes that run on it.

    m = ptsim.Machine(arch="x86_64", policy="shared", ram=64 << 20)
    p = m.spawn()
    a = p.mmap(addr=None, length=1 << 20, prot="rw", shared=False)
    p.write(a, b"hi"); c = p.fork(); c.read(a, 2)   # b"hi"

Accounting of a shared table: every process that reaches a table through its own upper
entries counts it, exactly as if it had been copied. VmPTE counts the whole table in each
sharer, and VmRSS counts the pages it maps in each sharer, so both read the same under every
policy and the same as the real kernel's /proc/PID/status. What sharing saves shows in the
machine's free frames and counters, not in per-process figures.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from .checking.invariants import check
from .hardware import ARCHES, Arch
from .kernel import POLICIES, CopyPolicy, Kernel, Task
from .kernel import syscalls as sys
from .kernel.mm import VMA
from .kernel.vmscan import try_to_swap_out


class Machine:
    """arch: a name in ptsim.ARCHES. policy: a name in ptsim.POLICIES, or a policy object
    (ptsim.kernel.CopyPolicy or a subclass, such as `SharedPolicy(read_fault="unshare")`).
    ram: bytes, whole pages, within what the geometry's frame numbers reach (`_check_ram`)."""

    def __init__(self, arch: str = "x86_64", policy: str | CopyPolicy = "copy", ram: int = 64 << 20):
        geometry = _arch(arch)
        policy = _policy(policy)
        _check_ram(geometry, ram)
        try:
            self.kernel = Kernel(geometry, ram, policy)
        except MemoryError as error:  # numpy could not reserve the frames or their metadata
            raise ValueError(f"ram: the host cannot allocate {ram:#x} bytes of simulated memory ({error})") from None

    @property
    def arch(self):
        return self.kernel.arch

    @property
    def policy(self) -> str:
        return self.kernel.policy.name

    @property
    def counters(self) -> dict[str, int]:
        return dict(self.kernel.tracer.counters)

    @property
    def free_frames(self) -> int:
        return self.kernel.mem_map.nr_free

    def spawn(self) -> Process:
        """The first process of a program: an empty address space."""
        k = self.kernel
        pid = k.new_pid(take=False)  # taken once the pgd is allocated, as fork takes it
        task = Task(pid, k.mm_alloc(pid))
        k.new_pid()
        k.tasks[pid] = task
        return Process(self, task)

    def swap_out(self, process: Process, addr: int) -> bool:
        """Reclaim: page out the private page `process` maps at `addr`, as 2.4's page-table
        scan would on reaching it. False if it cannot go: not mapped, or mapped twice.
        ptsim.OutOfMemory if every swap slot is taken (the page stays; nothing changes)."""
        if not isinstance(process, Process):
            raise ValueError(f"process must be a ptsim.Process, not {type(process).__name__}")
        if process.machine is not self:
            raise ValueError(f"process: {process!r} runs on another machine")
        sys.check_alive(process._task)
        task_size = self.arch.task_size
        if not isinstance(addr, int) or isinstance(addr, bool) or not 0 <= addr < task_size:
            raise ValueError(f"addr must be an int in [0, {task_size:#x}), not {addr!r}")
        return try_to_swap_out(self.kernel, process._task.mm, addr)

    def check(self) -> None:
        """Recount everything; raise ptsim.InvariantError on the first thing that is off."""
        check(self.kernel)

    @contextmanager
    def trace(self):
        """Record the kernel's events while the block runs: `with m.trace() as events: ...`.
        Traces may nest and close in any order: each gets every event reported while it is open."""
        with self.kernel.tracer.listening([]) as events:
            yield events


def _arch(arch) -> Arch:
    # isinstance first: `arch in ARCHES` raises TypeError for an unhashable value.
    if not isinstance(arch, str) or arch not in ARCHES:
        raise ValueError(f"arch must be one of {sorted(ARCHES)}, not {arch!r}")
    return ARCHES[arch]


def _policy(policy) -> CopyPolicy:
    """A policy by name, or a policy object (CopyPolicy or a subclass) used as it is."""
    if isinstance(policy, CopyPolicy):
        return policy
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)} or a CopyPolicy, not {policy!r}")
    return POLICIES[policy]


def _check_ram(arch: Arch, ram) -> None:
    """RAM must be whole pages, and every frame must have a number an entry can hold.

    The frame-number reach is the only ceiling of the geometry: 4 GiB on i386 (20-bit frame
    numbers), 4 PiB on x86_64. Below it the host decides. The frames are reserved zeroed and
    committed only where written, and of the per-frame metadata only the free lists are
    written at once (some 8 bytes a frame), so a machine may be bigger than the host's memory
    where the host overcommits; Linux's default refuses a reservation beyond its RAM and swap.
    A reservation the host refuses is a ValueError naming ram.
    """
    page = arch.page_size
    if not isinstance(ram, int) or isinstance(ram, bool) or ram <= 0 or ram % page:
        raise ValueError(f"ram must be a positive multiple of the {page}-byte page, not {ram!r}")
    reach = (1 << arch.pfn_bits) * page
    if ram > reach:
        raise ValueError(f"ram: {ram:#x} bytes is more than the {arch.pfn_bits}-bit frame numbers of {arch.name} reach ({reach:#x} bytes)")


class Process:
    def __init__(self, machine: Machine, task: Task):
        self.machine = machine
        self._task = task

    def __repr__(self) -> str:
        state = "exited" if self.exited else f"{len(self._task.mm.vmas)} vmas"
        return f"<Process {self.pid} ({state})>"

    @property
    def pid(self) -> int:
        return self._task.pid

    @property
    def ppid(self) -> int:
        """The pid of the process that forked this one (0 for a spawned one), as getppid(2)
        reports it; ptsim never re-parents, so it stays after the parent exits."""
        return self._task.ppid

    @property
    def exited(self) -> bool:
        return self._task.exited

    @property
    def minflt(self) -> int:
        return self._task.minflt

    @property
    def majflt(self) -> int:
        """Major faults: pages read back from swap."""
        return self._task.majflt

    @property
    def mm(self) -> MMView | None:
        """A read-only view of the address space (None once exited): see MMView."""
        return None if self._task.exited else MMView(self)

    def mmap(self, addr: int | None = None, length: int = 0, prot: str = "rw", shared: bool = False) -> int:
        return sys.sys_mmap(self.machine.kernel, self._task, addr, length, prot, shared)

    def munmap(self, addr: int, length: int) -> None:
        sys.sys_munmap(self.machine.kernel, self._task, addr, length)

    def mprotect(self, addr: int, length: int, prot: str) -> None:
        sys.sys_mprotect(self.machine.kernel, self._task, addr, length, prot)

    def madvise(self, addr: int, length: int, advice: str) -> None:
        sys.sys_madvise(self.machine.kernel, self._task, addr, length, advice)

    def fork(self) -> Process:
        return Process(self.machine, sys.sys_fork(self.machine.kernel, self._task))

    def exec(self) -> None:
        sys.sys_execve(self.machine.kernel, self._task)

    def exit(self) -> None:
        sys.sys_exit(self.machine.kernel, self._task)

    def read(self, addr: int, length: int) -> bytes:
        phys = self.machine.kernel.phys
        return b"".join(phys.read(pa, n) for pa, n in sys.access_user(self.machine.kernel, self._task, addr, length, False))

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        # bytes() would also take an int (that many zeros), a list or a range: refuse them.
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__}")
        data = bytes(data)  # a copy, and a memoryview of any format as its bytes
        phys, done = self.machine.kernel.phys, 0
        for pa, n in sys.access_user(self.machine.kernel, self._task, addr, len(data), True):
            phys.write(pa, data[done : done + n])
            done += n

    def translate(self, vaddr: int) -> int | None:
        return sys.translate(self.machine.kernel, self._task, vaddr)

    def status(self) -> dict[str, int]:
        """VmSize, VmRSS, VmPTE and VmSwap in kB, as /proc/PID/status shows them."""
        sys.check_alive(self._task)
        mm, page = self._task.mm, self.machine.arch.page_size
        rss, swapents = self.machine.kernel.get_mm_counters(mm)
        return {
            "VmSize": mm.vm_size() // 1024,
            "VmRSS": rss * page // 1024,
            "VmPTE": mm.pgtables_bytes // 1024,
            "VmSwap": swapents * page // 1024,
        }


@dataclass(frozen=True)
class VMAView:
    """A VMA as it was when read: its range, prot and flags. Setting a field raises
    AttributeError; nothing here reaches back into the kernel."""

    start: int
    end: int
    prot: str  # "", "r" or "rw"
    shared: bool  # MAP_SHARED (backed by a shmem object)
    pgoff: int
    anon_vma: bool
    anon_vma_forked: bool
    account: bool

    # The kernel's own reading of the fields.
    readable = VMA.readable
    writable = VMA.writable
    pgoff_of = VMA.pgoff_of

    @classmethod
    def of(cls, vma: VMA) -> VMAView:
        return cls(vma.start, vma.end, vma.prot, vma.shared, vma.pgoff, vma.anon_vma, vma.anon_vma_forked, vma.account)


class MMView:
    """A process's address space, read only: what `Process.mm` gives, in place of the
    kernel's `MM`, which a caller could change behind the kernel's back.

    Every read goes to the process's current mm (an exec gives it a new one), and raises
    ProcessExited once it has exited. VMAs come as VMAView copies. Kernel functions that
    only read `mm.pgd` take a view as their mm: `k.follow_pte`, `k.pmd_slot` (without
    alloc), `k.leaf_slots`. Setting or deleting any attribute raises AttributeError.
    """

    __slots__ = ("_process",)

    def __init__(self, process: Process):
        object.__setattr__(self, "_process", process)

    def __setattr__(self, name, value):
        raise AttributeError(f"mm is a read-only view: {name} cannot be set")

    def __delattr__(self, name):
        raise AttributeError(f"mm is a read-only view: {name} cannot be deleted")

    def __repr__(self) -> str:
        task = self._process._task
        return f"<mm of process {task.pid} (exited)>" if task.exited else f"<mm of process {task.pid}: pgd {self.pgd:#x}, pcid {self.pcid}, {len(task.mm.vmas)} vmas>"

    @property
    def _mm(self):
        task = self._process._task
        sys.check_alive(task)
        return task.mm

    @property
    def pgd(self) -> int:
        """The root table's frame: what CR3 holds while the process runs."""
        return self._mm.pgd

    @property
    def pcid(self) -> int:
        return self._mm.pcid

    @property
    def owner(self) -> int:
        return self._mm.owner

    @property
    def vmas(self) -> tuple[VMAView, ...]:
        return tuple(map(VMAView.of, self._mm.vmas))

    def find_vma(self, addr: int) -> VMAView | None:
        vma = self._mm.find_vma(addr)
        return None if vma is None else VMAView.of(vma)

    def vmas_in(self, start: int, end: int) -> tuple[VMAView, ...]:
        return tuple(map(VMAView.of, self._mm.vmas_in(start, end)))

    def vm_size(self) -> int:
        return self._mm.vm_size()

    @property
    def pgtables_bytes(self) -> int:
        return self._mm.pgtables_bytes

    @property
    def rss(self) -> int:
        """Resident pages: VmRSS in pages."""
        return self._counters()[0]

    @property
    def swapents(self) -> int:
        """Swap entries: VmSwap in pages."""
        return self._counters()[1]

    def _counters(self) -> tuple[int, int]:
        return self._process.machine.kernel.get_mm_counters(self._mm)
