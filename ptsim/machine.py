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

from .checking.invariants import check
from .hardware import ARCHES
from .kernel import POLICIES, Kernel, Task
from .kernel.fork import CopyPolicy
from .kernel import syscalls as sys
from .kernel.vmscan import try_to_swap_out


class Machine:
    def __init__(self, arch: str = "x86_64", policy: str | CopyPolicy = "copy", ram: int = 64 << 20):
        """`policy`: a name from ptsim.POLICIES, or a policy object (a CopyPolicy subclass's
        instance), such as `SharedPolicy(read_fault="unshare")`."""
        if arch not in ARCHES:
            raise ValueError(f"arch must be one of {sorted(ARCHES)}, not {arch!r}")
        if not isinstance(policy, CopyPolicy):
            if policy not in POLICIES:
                raise ValueError(f"policy must be one of {sorted(POLICIES)} or a CopyPolicy, not {policy!r}")
            policy = POLICIES[policy]
        page = ARCHES[arch].page_size
        if not isinstance(ram, int) or isinstance(ram, bool) or ram <= 0 or ram % page:
            raise ValueError(f"ram must be a positive multiple of the {page}-byte page, not {ram!r}")
        self.kernel = Kernel(ARCHES[arch], ram, policy)

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
        task = Task(k.new_pid(), None)
        task.mm = k.mm_alloc(task.pid)
        k.tasks[task.pid] = task
        return Process(self, task)

    def swap_out(self, process: Process, addr: int) -> bool:
        """Reclaim: page out the private page `process` maps at `addr`, as 2.4's page-table
        scan would on reaching it. False if it cannot go: not mapped, or mapped twice."""
        sys.check_alive(process._task)
        return try_to_swap_out(self.kernel, process._task.mm, addr)

    def check(self) -> None:
        """Recount everything; raise ptsim.InvariantError on the first thing that is off."""
        check(self.kernel)

    @contextmanager
    def trace(self):
        """Record the kernel's events while the block runs: `with m.trace() as events: ...`."""
        tracer = self.kernel.tracer
        outer, tracer.events = tracer.events, []
        try:
            yield tracer.events
        finally:
            if outer is not None:
                outer.extend(tracer.events)
            tracer.events = outer


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
    def mm(self):
        return self._task.mm

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

    def write(self, addr: int, data: bytes) -> None:
        data = bytes(data)
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
