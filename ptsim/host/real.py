"""Play a scenario on the host's own Linux kernel: one real process per scenario process.

    with HostKernel() as host:        # or play_real(scenario), which starts and stops one
        record = host.play(scenario)

The pieces, and why each is there:

- **Agents.** Every scenario process is a real process, an *agent*: a small Python interpreter
  (the standard library, this module and `procfs`; no numpy) that serves calls one at a time
  over an AF_UNIX SOCK_SEQPACKET socket (one message per call and per answer). The scenario's
  `fork` is the agent's own os.fork(): the parent makes a new socketpair first, the child keeps
  one end, and the parent hands the other end to the controller with socket.send_fds. mmap,
  munmap and mprotect are libc's, through ctypes; an mmap is MAP_FIXED (the zygote checks with
  MAP_FIXED_NOREPLACE that the region is free) and is followed by madvise(MADV_NOHUGEPAGE).
- **Accesses run in a clone(CLONE_VM) child.** The agent never touches scenario memory itself.
  For each page of an access (an access stops at the first page it may not touch, as ptsim's
  player does) it clones a child that shares its address space, with a stack of its own, and
  runs libc's memcpy there: clone's function is libc's setcontext, whose context (filled once
  by getcontext) says "call memcpy(dst, src, n), then return into _exit". If the page is
  forbidden, the child dies of SIGSEGV and wait4 says so: the SIGSEGV is seen, not inferred
  from /proc/PID/maps, the agent lives on, and the faulting access has changed nothing. If it
  is allowed, the child took the fault in the agent's address space, as the agent's own load
  or store would have. A clone costs 40 to 100 microseconds.
- **Minor faults** are the clone child's ru_minflt, from wait4: the kernel charges a fault to
  the task that takes it, and the child took the access's faults and nothing else. It runs no
  Python, so none of the interpreter's own copy-on-write faults after a fork (27 on the first
  access of an unwarmed forked interpreter, measured) can be counted; the stack and buffers it
  uses are written by the agent just before each clone, and after every fork the agent runs
  the same clones on a scratch page, so that every libc page the child executes is mapped.
  Probing in a clone and then accessing in the agent would not do: a probe that succeeds has
  already taken the fault, in the clone; and in the agent a SIGSEGV cannot be survived.
- **Frames** come from /proc/self/pagemap, read by each agent (PFNs need CAP_SYS_ADMIN; when
  they read as 0 the record says `frames_known=False`).
- **VmPTE of the scenario region** is the agent's VmPTE (/proc/self/status) at the
  observation minus the interpreter's own: when a process leaves (its `exit`, or the end of
  the scenario), the agent first unmaps the whole region (munmap frees every table under it,
  the PUD included, since nothing else lies in that PGD entry), reads VmPTE, then exits. So
  that the interpreter's own figure cannot move meanwhile, every agent first creates all the
  tables its mappings need, by reading a byte of every 2 MiB they reach (in a clone, so that
  a read past the end of a file is harmless), after the zygote has grown its C heap for good
  (`_settle_heap`). p0's VmPTE before its first mmap must equal its figure at the end; if it
  does not, the record says so in a note.
- **VmRSS of the scenario region** is the sum of the Rss of the region's VMAs in
  /proc/self/smaps: the kernel's page walk counts what VmRSS counts (anonymous and shmem pages,
  never the zero page), and only there. (The interpreter's own resident memory moves by
  hundreds of kB in a scenario, so VmRSS minus a baseline would not do.)
- **Nothing left running.** A *zygote* agent, started once per HostKernel, never maps the
  region: each scenario's p0 is a fork of it. The zygote is the child subreaper of every agent,
  so an agent whose parent has gone is reaped by it. At the end of a scenario, and on any
  failure, the controller closes every agent's socket (an agent exits on end of file) and
  waits until every agent's pid is gone (checked against its start time), killing a
  straggler by pid after a while. `close()` ends the zygote the same way.
- Core dumps: the agents are made non-dumpable (prctl PR_SET_DUMPABLE, 0), so that a clone
  dying of SIGSEGV dumps nothing. The kernel still logs "segfault at ..." lines, rate-limited.

Linux on x86-64 with glibc only (getcontext/setcontext and the layout of ucontext_t);
`host_support()` says why not, elsewhere.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import platform
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import procfs

if TYPE_CHECKING:
    from .scenario import Record, Scenario

# The scenario region and the longest transfer, which the scenario format takes from here (an
# agent must not import scenario, which loads ptsim and numpy).
PAGE = 4096
REGION_START = 0x2000_0000_0000
REGION_BYTES = 1 << 39  # one PGD entry of x86-64: 512 GiB, nothing of the interpreter's in it
MAX_TRANSFER = 64 << 10  # the longest read, the longest written string

PROT_BITS = {"": 0, "r": 1, "rw": 3}  # PROT_NONE, PROT_READ, PROT_READ | PROT_WRITE
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x01, 0x02, 0x10, 0x20
MAP_NORESERVE, MAP_FIXED_NOREPLACE = 0x4000, 0x100000
MADV_NOHUGEPAGE = 15
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
# The access's child shares the address space, and (only to be cheaper to make) the
# filesystem context, the file table and the signal handlers: SIGSEGV stays at its default.
CLONE_FLAGS = 0x100 | 0x200 | 0x400 | 0x800  # CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND
# glibc's x86-64 ucontext_t: uc_mcontext.gregs[] starts at byte 40; gregs indices (REG_*).
UCONTEXT_BYTES = 1024  # sizeof(ucontext_t) is 968
GREGS_OFFSET = 40
REG_RDI, REG_RSI, REG_RDX, REG_RSP, REG_RIP = 8, 9, 12, 15, 16
CLONE_STACK_BYTES = 64 << 10
PMD_BYTES = 2 << 20  # what one last-level table maps
HEAP_BYTES = 8 << 20  # the C heap every agent has from the start (see _settle_heap)
WAIT_FOR_EXIT_SECONDS = 10  # how long teardown waits for agents to be reaped
KILL_AFTER_SECONDS = 2


def host_support() -> str | None:
    """None if scenarios can be played here, else why not."""
    if sys.platform != "linux":
        return f"the host is {sys.platform}, not Linux"
    if platform.machine() != "x86_64":
        return f"the host is {platform.machine()}: the player knows glibc's ucontext_t of x86-64 only"
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, name) for name in ("getcontext", "setcontext", "clone", "wait4")):
        return "the host's C library lacks getcontext/setcontext/clone/wait4 (the player needs glibc)"
    return None


# -- the agent: runs in every real process --------------------------------------------------


class _Rusage(ctypes.Structure):
    _fields_ = [("ru_utime", ctypes.c_long * 2), ("ru_stime", ctypes.c_long * 2)] + [
        (name, ctypes.c_long)
        for name in (
            "ru_maxrss",
            "ru_ixrss",
            "ru_idrss",
            "ru_isrss",
            "ru_minflt",
            "ru_majflt",
            "ru_nswap",
            "ru_inblock",
            "ru_oublock",
            "ru_msgsnd",
            "ru_msgrcv",
            "ru_nsignals",
            "ru_nvcsw",
            "ru_nivcsw",
        )
    ]


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    for name in ("munmap", "madvise", "mprotect"):
        getattr(libc, name).argtypes = [ctypes.c_void_p, ctypes.c_size_t] + ([ctypes.c_int] if name != "munmap" else [])
    libc.clone.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int] + [ctypes.c_void_p] * 4
    libc.wait4.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.POINTER(_Rusage)]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _errno_name() -> str:
    return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))


class _Agent:
    """One real process: it serves the controller's calls until end of file."""

    def __init__(self, sock: socket.socket, zygote: bool):
        self.sock, self.zygote = sock, zygote
        self.libc = libc = _libc()
        self.context = ctypes.create_string_buffer(UCONTEXT_BYTES)
        if libc.getcontext(self.context) != 0:
            raise OSError(ctypes.get_errno(), "getcontext")
        self.stack = ctypes.create_string_buffer(CLONE_STACK_BYTES)
        base = ctypes.addressof(self.stack)
        self.stack_top = (base + CLONE_STACK_BYTES - 256) & ~15  # clone's stack: setcontext runs here
        self.memcpy_rsp = ((base + CLONE_STACK_BYTES // 2) & ~15) - 8  # memcpy's stack: a call's alignment
        self.src = ctypes.create_string_buffer(MAX_TRANSFER)
        self.dst = ctypes.create_string_buffer(MAX_TRANSFER)
        self.inbox = bytearray(2 * MAX_TRANSFER)
        addr = ctypes.c_void_p
        self.setcontext, self.memcpy, self._exit = (ctypes.cast(getattr(libc, f), addr).value for f in ("setcontext", "memcpy", "_exit"))
        scratch = libc.mmap(None, PAGE, PROT_BITS["rw"], MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if scratch in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap of the scratch page")
        self.scratch = scratch
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE)")
        self.warm_up()

    # -- the access, in a clone ---------------------------------------------------------

    def clone_memcpy(self, dst: int, src: int, n: int) -> tuple[int, int]:
        """memcpy(dst, src, n) in a clone(CLONE_VM) child: (the signal that killed it or 0,
        its minor faults)."""
        ctypes.memset(self.stack, 0, CLONE_STACK_BYTES)  # present and writable before the child runs
        for reg, value in ((REG_RDI, dst), (REG_RSI, src), (REG_RDX, n), (REG_RSP, self.memcpy_rsp), (REG_RIP, self.memcpy)):
            struct.pack_into("<Q", self.context, GREGS_OFFSET + 8 * reg, value)
        ctypes.c_uint64.from_address(self.memcpy_rsp).value = self._exit  # memcpy returns into _exit
        pid = self.libc.clone(
            self.setcontext, self.stack_top, CLONE_FLAGS | signal.SIGCHLD, ctypes.addressof(self.context), None, None, None
        )
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone")
        status, usage = ctypes.c_int(), _Rusage()
        while self.libc.wait4(pid, ctypes.byref(status), 0, ctypes.byref(usage)) != pid:
            if ctypes.get_errno() != errno.EINTR:
                raise OSError(ctypes.get_errno(), "wait4")
        return (os.WTERMSIG(status.value) if os.WIFSIGNALED(status.value) else 0), usage.ru_minflt

    def warm_up(self) -> None:
        """Run every path an access and an observation take, on the scratch page, so that the
        libc pages a clone executes are mapped in this process (a fork's child has none of
        its parent's file-backed entries) and the interpreter's objects are settled."""
        for n in (1, 300, PAGE):
            ctypes.memset(self.src, n & 0xFF, n)
            for dst, src in ((self.scratch + PAGE - n, ctypes.addressof(self.src)), (ctypes.addressof(self.dst), self.scratch)):
                signo, _ = self.clone_memcpy(dst, src, n)
                if signo:
                    raise OSError(f"the clone warm-up died of signal {signo}")
        self.observe([(self.scratch // PAGE, 1)])
        self.populate_tables()

    def populate_tables(self) -> None:
        """Read one byte of every 2 MiB of every readable mapping of the interpreter, so that
        all its page tables exist now: code run for the first time later faults its pages in
        within tables already counted, and VmPTE moves only with the scenario region. A fork's
        child needs this again: fork copies no entries of file mappings without anon_vma.
        (The heap was made big enough for the rest of the agent's life first: see `_settle_heap`.)"""
        with open("/proc/self/maps") as f:
            spans = [line.split()[:2] for line in f]
        touch = {}  # one readable address in each 2 MiB that a mapping reaches
        for span, perms in spans:
            lo, hi = (int(x, 16) for x in span.split("-"))
            if perms[0] == "r" and hi <= 1 << 47 and not REGION_START <= lo < REGION_START + REGION_BYTES:
                for addr in range(lo & ~(PMD_BYTES - 1), hi, PMD_BYTES):
                    touch.setdefault(addr, max(addr, lo))
        for addr in touch.values():
            self.clone_memcpy(ctypes.addressof(self.dst), addr, 1)

    def access(self, write: bool, addr: int, length: int, data: bytes | None, fill: int | None):
        """Page by page; stop at the first page whose clone dies."""
        if write and data is not None:
            ctypes.memmove(self.src, data, len(data))
        elif write:
            ctypes.memset(self.src, fill, min(length, PAGE))
        ctypes.memset(self.dst, 0, MAX_TRANSFER)
        done = minflt = 0
        while done < length:
            a = addr + done
            n = min(length - done, PAGE - a % PAGE)
            if write:
                src = ctypes.addressof(self.src) + (done if data is not None else 0)
                signo, faults = self.clone_memcpy(a, src, n)
            else:
                signo, faults = self.clone_memcpy(ctypes.addressof(self.dst) + done, a, n)
            minflt += faults
            if signo:
                result = "SIGSEGV" if signo == signal.SIGSEGV else signal.Signals(signo).name
                return (result, a, minflt, b"" if write else ctypes.string_at(self.dst, done))
            done += n
        return ("ok", None, minflt, b"" if write else ctypes.string_at(self.dst, done))

    # -- the other calls ------------------------------------------------------------------

    def mm_call(self, op: str, addr: int, length: int, prot: str = "", shared: bool = False) -> str:
        libc = self.libc
        if op == "mmap":
            flags = (MAP_SHARED if shared else MAP_PRIVATE) | MAP_ANONYMOUS | MAP_FIXED
            if libc.mmap(addr, length, PROT_BITS[prot], flags, -1, 0) != addr:
                return _errno_name()
            return "ok" if libc.madvise(addr, length, MADV_NOHUGEPAGE) == 0 else _errno_name()
        if op == "munmap":
            return "ok" if libc.munmap(addr, length) == 0 else _errno_name()
        return "ok" if libc.mprotect(addr, length, PROT_BITS[prot]) == 0 else _errno_name()

    def observe(self, runs: list[tuple[int, int]]):
        """Raw pagemap entries of the runs of pages, VmPTE, and the region's resident kB."""
        entries = b"".join(procfs.read_pagemap(vpn, n) for vpn, n in runs)
        return entries, procfs.read_status()["VmPTE"], procfs.read_region_rss(REGION_START, REGION_START + REGION_BYTES)

    def fork(self) -> None:
        """The scenario's fork; the child goes on serving on a socket of its own."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            mine.close()
            self.sock.close()
            self.sock, self.zygote = theirs, False
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote's reaper is not ours
            self.warm_up()
            self.reply(("ready", os.getpid()))
            return
        theirs.close()
        socket.send_fds(self.sock, [pickle.dumps(("forked", pid))], [mine.fileno()])
        mine.close()

    def leave(self) -> None:
        """The scenario's exit: unmap the region, report the interpreter's own figures, go."""
        self.libc.munmap(REGION_START, REGION_BYTES)
        self.reply(("ok", procfs.read_status()))
        os._exit(0)

    # -- the loop -------------------------------------------------------------------------

    def reply(self, message) -> None:
        self.sock.send(pickle.dumps(message))

    def serve(self) -> None:
        while True:
            n = self.sock.recv_into(self.inbox)
            if not n:
                os._exit(0)
            op, *args = pickle.loads(memoryview(self.inbox)[:n])
            try:
                if op == "fork":
                    self.fork()
                    continue
                if self.zygote:
                    raise ValueError(f"the zygote only forks, it does not {op}")
                if op == "access":
                    answer = self.access(*args)
                elif op == "observe":
                    answer = self.observe(*args)
                elif op == "status":
                    answer = procfs.read_status()
                elif op == "exit":
                    self.leave()
                else:
                    answer = self.mm_call(op, *args)
                self.reply(("ok", answer))
            except Exception as e:  # the controller raises it; this process goes on serving
                self.reply(("error", f"{type(e).__name__}: {e}"))
            self.reap()

    def reap(self) -> None:
        """Reap children that have exited (scenario children; a clone is reaped at once)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return


def _settle_heap(libc) -> None:
    """Grow the C heap once, for good, before its page tables are made: malloc serves every
    later allocation below 16 MiB from the heap, never trims it, and finds it already large,
    so the interpreter maps no new memory (no new table) while a scenario runs. Without this,
    p0's own VmPTE grew by 4 kB in 8 of a fresh zygote's first 60 scenarios, when the heap
    first grew; with it, in none of 200."""
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if not (libc.mallopt(M_MMAP_THRESHOLD, HEAP_BYTES * 2) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)):
        raise OSError("mallopt refused")
    libc.free(libc.malloc(HEAP_BYTES))


def _serve_zygote(fd: int) -> None:
    """The zygote's main: check the region is free, become every agent's subreaper, serve."""
    sock = socket.socket(fileno=fd)
    try:
        libc = _libc()
        _settle_heap(libc)
        probe = libc.mmap(REGION_START, REGION_BYTES, 0, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0)
        if probe != REGION_START:
            raise OSError(f"the scenario region {REGION_START:#x} is not free here ({_errno_name()})")
        libc.munmap(REGION_START, REGION_BYTES)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        agent = _Agent(sock, zygote=True)
    except Exception as e:
        sock.send(pickle.dumps(("error", f"{type(e).__name__}: {e}")))
        os._exit(1)
    signal.signal(signal.SIGCHLD, lambda *_: agent.reap())
    agent.reply(("ready", os.getpid()))
    agent.serve()


# How the zygote starts: a fresh interpreter that loads this module and procfs but not ptsim's
# __init__ (numpy), by registering the two packages as bare namespaces first.
_BOOT = """
import sys, types
root = sys.argv[2]
for name, path in (("ptsim", root), ("ptsim.host", root + "/host")):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from ptsim.host.real import _serve_zygote
_serve_zygote(int(sys.argv[1]))
"""


# -- the controller ------------------------------------------------------------------------


class _Remote:
    """The controller's handle on one agent."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        kind, self.pid = self.receive()
        if kind != "ready":
            raise RuntimeError(f"an agent failed to start: {self.pid}")
        self.start_time = _start_time(self.pid)

    def receive(self):
        message = self.sock.recv(4 * MAX_TRANSFER)
        if not message:
            raise RuntimeError("an agent closed its socket")
        return pickle.loads(message)

    def call(self, *message):
        self.sock.send(pickle.dumps(message))
        kind, answer = self.receive()
        if kind == "error":
            raise RuntimeError(f"agent {self.pid}, {message[0]}: {answer}")
        return answer

    def fork(self) -> _Remote:
        self.sock.send(pickle.dumps(("fork",)))
        message, fds, _, _ = socket.recv_fds(self.sock, 4 * MAX_TRANSFER, 1)
        kind, detail = pickle.loads(message)
        if kind != "forked" or len(fds) != 1:
            raise RuntimeError(f"agent {self.pid}: fork failed: {detail}")
        return _Remote(socket.socket(fileno=fds[0]))

    def alive(self) -> bool:
        """Not yet reaped: its /proc entry is there, with the start time it had."""
        return _start_time(self.pid) == self.start_time


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _wait_gone(remotes: list[_Remote]) -> None:
    """Close every socket, then wait until every agent is reaped; kill stragglers by pid."""
    for remote in remotes:
        remote.sock.close()
    start = time.monotonic()
    killed = False
    while live := [r for r in remotes if r.alive()]:
        waited = time.monotonic() - start
        if waited > KILL_AFTER_SECONDS and not killed:
            for r in live:
                try:
                    os.kill(r.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed = True
        if waited > WAIT_FOR_EXIT_SECONDS:
            raise RuntimeError(f"agents {[r.pid for r in live]} were not reaped")
        time.sleep(0.001)


class HostKernel:
    """The host's kernel, driven through agents; a context manager that reaps them all."""

    def __init__(self):
        reason = host_support()
        if reason is not None:
            raise RuntimeError(f"cannot play scenarios here: {reason}")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        root = str(Path(__file__).resolve().parent.parent)
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOT, str(theirs.fileno()), root], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL
        )
        theirs.close()
        try:
            self._zygote = _Remote(mine)
        except Exception:
            mine.close()
            self._process.kill()
            self._process.wait()
            raise
        self.release = platform.release()

    def __enter__(self) -> HostKernel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._process.poll() is None:
            self._zygote.sock.close()
            try:
                self._process.wait(WAIT_FOR_EXIT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def play(self, scenario: Scenario) -> Record:
        """Play `scenario` with fresh agents; every agent is reaped before this returns."""
        from .scenario import Outcome, Record  # here, not at the top: agents must not load scenario

        started: list[_Remote] = []
        try:
            p0 = self._zygote.fork()
            started.append(p0)
            agents, runs = {"p0": p0}, scenario.pages()
            before = {"p0": p0.call("status")}
            left, outcomes, raw_observations = {}, [], []
            for call in scenario.calls:
                agent = agents.get(call.process)
                if call.op == "observe":
                    raw_observations.append((call.line, {name: a.call("observe", runs) for name, a in agents.items()}))
                    outcomes.append(Outcome())
                elif call.op in ("read", "write"):
                    result, address, minflt, data = agent.call("access", call.op == "write", call.addr, call.length, call.data, call.fill)
                    outcomes.append(Outcome(result, data, address, minflt))
                elif call.op == "fork":
                    agents[call.child] = agent.fork()
                    started.append(agents[call.child])
                    outcomes.append(Outcome())
                elif call.op == "exit":
                    left[call.process] = agents.pop(call.process).call("exit")
                    outcomes.append(Outcome())
                else:
                    outcomes.append(Outcome(agent.call(call.op, call.addr, call.length, call.prot, call.shared)))
            raw_observations.append((None, {name: a.call("observe", runs) for name, a in agents.items()}))
            for name, agent in agents.items():
                left[name] = agent.call("exit")
        finally:
            _wait_gone(started)
        record = Record(f"Linux {self.release} (host)", outcomes, [])
        _observations(record, raw_observations, left, runs)
        drift = left["p0"]["VmPTE"] - before["p0"]["VmPTE"]
        if drift:
            record.notes.append(
                f"p0's interpreter changed its own VmPTE by {drift} kB during the scenario: the region's VmPTE may be off by as much"
            )
        return record


def _observations(record, raw_observations, left, runs) -> None:
    """Decode the agents' pagemap entries, and subtract each interpreter's own figures."""
    from .scenario import Observation, ProcessView

    for line, raw in raw_observations:
        views = {}
        for name, (entries, vm_pte, vm_rss) in raw.items():
            frames, offset = {}, 0
            for vpn, n in runs:
                frames.update(procfs.pagemap_frames(entries[offset : offset + 8 * n], vpn))
                offset += 8 * n
            if any(pfn == 0 for pfn in frames.values()):
                record.frames_known = False
            views[name] = ProcessView(frames, vm_pte - left[name]["VmPTE"], vm_rss)
        record.observations.append(Observation(line, views))
    if not record.frames_known:
        record.notes.append("pagemap shows PFNs as 0 (reading them needs CAP_SYS_ADMIN): frames were not compared")


def play_real(scenario: Scenario) -> Record:
    """Play `scenario` on the host kernel, with a HostKernel of its own."""
    with HostKernel() as host:
        return host.play(scenario)
