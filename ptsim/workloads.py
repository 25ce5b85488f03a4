"""Processes laid out as real programs, and what their children do: the book's workloads.

A shell runs a command by fork and exec. Phillips looked at sharing page tables there (29 Jul
2002, <E17Z4v0-0002io-00@starship>, replying to Andrew Morton's <3D439E09.3348E8D6@zip.com.au>):
forking from bash shared about 200 pages in three page tables (stack, text and .interp), "and
at least one page in each of these gets written during the exec, so all are unshared".
`run_command` plays both children: the one that writes nothing before exec (the textbook
picture, the best case for sharing) and the one that writes first, as the shell's child does.
`shell(m, arena=...)` gives the shell more written memory, to find the parent size above
which sharing does less work than copying for that second child.

`SHELL_LAYOUT` is ptsim's sketch of such a process, not a measurement: the program (text, then
data and heap) in one last-level table, the dynamic linker and libc in another, the stack in a
third, at addresses that hold on i386 (4 MiB tables, as in 2002) and x86_64 alike. ptsim has no
files, so text is private memory that is read (zero pages), not an executable's pages.
"""

from __future__ import annotations

from .machine import Machine, Process

KiB = 1 << 10
# (start, length, prot) of each mapping, by name; "program" and "interp" data follow their text.
SHELL_LAYOUT = {
    "program text": (0x0804_8000, 512 * KiB, "r"),
    "program data": (0x080C_8000, 64 * KiB, "rw"),
    "heap": (0x080D_8000, 256 * KiB, "rw"),
    "interp text": (0x4000_0000, 1024 * KiB, "r"),
    "interp data": (0x4010_0000, 64 * KiB, "rw"),
    "stack": (0xBFFC_0000, 256 * KiB, "rw"),
}
# Where `shell(m, arena=...)` maps its extra memory, apart from the rest (as malloc maps a large
# block): on a table boundary on both geometries, with room for 512 MiB below "interp text".
ARENA = 0x2000_0000
ARENA_MAX = SHELL_LAYOUT["interp text"][0] - ARENA
# What the child of a shell writes before execve: a word on the stack, in the program's data
# (errno, say) and in the dynamic linker's: one page in each of the three tables.
WRITTEN_BEFORE_EXEC = ("stack", "program data", "interp data")


def shell(m: Machine, arena: int = 0) -> Process:
    """A process laid out as SHELL_LAYOUT says, every page touched: text read, the rest written;
    with `arena` bytes (whole pages, at most ARENA_MAX) more of private memory written at ARENA."""
    if m.arch.name not in ("i386", "x86_64"):
        raise ValueError(f"m: the shell's layout is for i386 or x86_64, not {m.arch.name!r}")
    if not (isinstance(arena, int) and 0 <= arena <= ARENA_MAX and arena % m.arch.page_size == 0):
        raise ValueError(f"arena must be whole pages from 0 to {ARENA_MAX:#x} bytes, not {arena!r}")
    p = m.spawn()
    for start, length, prot in SHELL_LAYOUT.values():
        p.mmap(start, length, prot)
        if "w" in prot:
            p.write(start, b"\1" * length)
        else:
            p.read(start, length)
    if arena:
        p.mmap(ARENA, arena, "rw")
        p.write(ARENA, b"\1" * arena)
    return p


def run_command(parent: Process, writes_before_exec: bool = True) -> Process:
    """fork, then exec in the child, as a shell runs a command; with `writes_before_exec` the
    child first writes a word in each mapping of WRITTEN_BEFORE_EXEC, as a real shell's does."""
    child = parent.fork()
    if writes_before_exec:
        for name in WRITTEN_BEFORE_EXEC:
            start, length, _ = SHELL_LAYOUT[name]
            child.write(start + length - 8, bytes(8))
    child.exec()
    return child
