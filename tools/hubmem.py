"""Each chapter's peak memory and time, in a fresh kernel: the figures for sizing a class's
JupyterHub (docs/instructor.md).

    python -m tools.hubmem [CHAPTER ...] [--interval SECONDS]

Runs every chapter of book.toml (or those named) top to bottom in a fresh kernel, as
`python -m tools.book run --dry-run` does (nothing is stored), while a thread reads, every
`--interval` seconds (default 0.02), the memory of every process descended from this one: the
kernel and whatever it starts (chapter 3 forks the kernel itself; `ptsim.host` starts real
processes). No root and no cgroup is needed. A line per chapter:

  seconds     the run's wall time
  peak PSS    the largest total, at one sample, of Pss (/proc/PID/smaps_rollup) over the kernel
              and its descendants: resident memory with every shared page divided among the
              processes that map it, so a forked child's copy-on-write pages count once, not
              twice as a sum of VmRSS would count them. Memory that lives less than an interval
              can be missed.
  kernel HWM  the kernel's VmHWM (/proc/PID/status): the peak of its resident set, kept by the
              kernel itself, so it misses nothing, but it counts shared libraries whole and
              leaves out the processes it starts
  at end      the Pss total at the last sample before the kernel shut down: what a notebook left
              open keeps
  processes   the most processes seen at once (a fork that exits within an interval may not show)
"""

import argparse
import os
import sys
import threading
from dataclasses import dataclass

import nbformat

from ptsim.host.procfs import read_kb_fields
from tools.book import chapters, resolve, run

DEFAULT_INTERVAL = 0.02


def children_by_parent():
    """{parent pid: [child pids]} of every process now in /proc."""
    tree = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # it exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        tree.setdefault(ppid, []).append(int(name))
    return tree


def descendants(pid):
    """Every process below `pid`."""
    tree, found, todo = children_by_parent(), [], [pid]
    while todo:
        kids = tree.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kb_field(path, name):
    """The kB figure of the line `name:` in a /proc file, or None if the process has gone."""
    try:
        return read_kb_fields(path).get(name)
    except OSError:
        return None


@dataclass
class Peak:
    """What the sampler saw of one chapter's processes, in kB."""

    pss_kb: int = 0
    end_pss_kb: int = 0
    kernel_hwm_kb: int = 0
    processes: int = 0
    samples: int = 0


class Sampler(threading.Thread):
    """Reads the memory of the kernel and its descendants every `interval` seconds, from the
    moment `watch` names the kernel until `done` is set."""

    def __init__(self, interval):
        super().__init__(daemon=True)
        self.interval, self.peak, self.done, self.kernel = interval, Peak(), threading.Event(), None

    def watch(self, pid):
        self.kernel = pid

    def sample(self):
        if self.kernel is None:
            return
        procs = [self.kernel, *descendants(self.kernel)]
        pss = [kb for kb in (kb_field(f"/proc/{pid}/smaps_rollup", "Pss") for pid in procs) if kb is not None]
        hwm = kb_field(f"/proc/{self.kernel}/status", "VmHWM")
        if hwm is None:  # the kernel has gone: its last sample stands
            return
        peak = self.peak
        peak.samples += 1
        peak.pss_kb = max(peak.pss_kb, sum(pss))
        peak.end_pss_kb = sum(pss)
        peak.processes = max(peak.processes, len(pss))
        peak.kernel_hwm_kb = max(peak.kernel_hwm_kb, hwm)

    def run(self):
        while not self.done.wait(self.interval):
            self.sample()


def measure(path, interval=DEFAULT_INTERVAL):
    """Run the chapter at `path` in a fresh kernel, storing nothing. Returns (seconds, Peak)."""
    nb = nbformat.read(path, as_version=4)
    sampler = Sampler(interval)
    sampler.start()
    try:
        seconds = run(nb, path.parent, on_kernel=sampler.watch)
    finally:
        sampler.done.set()
        sampler.join()
    if not sampler.peak.samples:
        raise RuntimeError(f"{path.name}: no sample of the kernel's memory was taken; try a shorter --interval")
    return seconds, sampler.peak


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tools.hubmem", description=__doc__.split("\n\n")[0])
    parser.add_argument("chapter", nargs="*", help="file names from book.toml or notebook paths (default: all)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between samples (default 0.02)")
    args = parser.parse_args(argv)
    if sys.platform != "linux":
        parser.error(f"reading the processes' memory needs Linux's /proc; this is {sys.platform}")
    if not args.interval > 0:
        parser.error(f"--interval must be positive, not {args.interval}")
    try:
        paths = [resolve(name) for name in (args.chapter or chapters())]
    except ValueError as error:
        parser.error(str(error))
    print(f"{'chapter':<28} {'seconds':>7} {'peak PSS MiB':>12} {'kernel HWM MiB':>14} {'at end MiB':>10} {'processes':>9}")
    for path in paths:
        seconds, peak = measure(path, args.interval)
        print(f"{path.name:<28} {seconds:>7.1f} {peak.pss_kb / 1024:>12.0f} {peak.kernel_hwm_kb / 1024:>14.0f} "
              f"{peak.end_pss_kb / 1024:>10.0f} {peak.processes:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
