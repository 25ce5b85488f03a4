"""How long fork takes: this machine's kernel, ptsim's fork policies, and a numpy floor.

For each size of private anonymous memory, with every 4 KiB page written, six figures are
measured side by side in one run, each the median of `--repeat` forks:

  real          os.fork() of this Python process holding a real buffer of that size
                (MAP_PRIVATE|MAP_ANONYMOUS, MADV_NOHUGEPAGE so that every page is 4 KiB),
                timed in the parent from just before the call to just after it returns. The
                child calls os._exit(0) at once and is waited for outside the timed region.
  copy          ptsim's classic fork (policy "copy") of a process with the same buffer.
  shared first  ptsim's shared fork (policy "shared") of a parent whose tables nobody else
                uses: each table's use count goes 1 -> 2, and every private writable PTE in
                it is write-protected. Phillips' costly case.
  up.first      the first fork under policy "upper_wp": tables shared as above, but
                write-protected through each sharer's upper entry (McCracken, ODF), so the
                fork touches no PTE.
  shared again  a shared fork while a first child still shares the tables (2 -> 3): upper
                entries and use counts only.
  floor         the least numpy can do for a copy fork of the same PTEs: write-protect them
                (clear bit 1), copy them into the child's tables, and add one to the refcount
                of every page they map.

and, in a second table, what two of the sharing policy's switches cost:

  again, 1->2   "shared again" above: the table is write-protected only when its count goes
                1 -> 2 (Phillips' proposal of 29 Jan 2002, ptsim's default).
  again, every  the same fork under wrprotect="every_fork": the private entries are
                write-protected at every fork that shares the table, whatever its count, as
                Phillips' patch of 16 and 22 Feb 2002 does. They are read-only already, so the
                pass changes nothing, but it reads every PTE again.
  first, excl.  "shared first" under exclusive_at_fork=True: the fork also clears
                PG_anon_exclusive of every page the shared tables map, keeping the flag's
                per-process meaning as Linux's fork does (a pass over every PTE and a scatter
                into the page metadata: the kind of per-page work that, with rmap and rss
                accounting, took COW PTE's gains away).

Every fork but "shared again" is of a parent that has just written every page: between two
forks the child exits and the parent writes its whole buffer again, outside the timed region.
So every fork write-protects every PTE and finds the tables cold in the cache, as the first
fork after a burst of work does. The very first fork of each kind is also reported alone: it
pays the host's one-off costs (first use of the allocator's memory, code paths not yet run).
The garbage collector is off throughout, and every code path runs once on a small buffer
before anything is timed.

The run also reports what one touched simulated page costs the host (this process's VmRSS
and VmPTE before the machine is built and after its buffer is touched), and the VmPTE of the
real parent beside the simulated parent's. One buffer or machine exists at a time, so the
host needs about the largest size, once.

    python bench/fork_bench.py                      # 256M,1G,4G, median of 5: a few minutes
    python bench/fork_bench.py --sizes 64M,256M --repeat 3 --json bench/results/fork.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import numpy as np

import ptsim
from ptsim.hardware import ARCHES
from ptsim.kernel.fork import SharedPolicy
from ptsim.hardware.arch import PFN_SHIFT, _PAGE_PRESENT, _PAGE_RW
from ptsim.host.measure import (GiB, KiB, MiB, TouchedBuffer, format_size, load_average, machine_info,
                                parse_size, time_forks)
from ptsim.host.procfs import read_status

PAGE = 4 * KiB
SPARE_RAM = 64 * MiB  # simulated RAM beyond the buffer: the parent's and the children's tables
TOUCH_CHUNK = 16 * MiB  # bytes per Process.write call: the data written is this small buffer
TOUCH_DATA = b"\xa5" * TOUCH_CHUNK
WARM_UP_SIZE = 4 * MiB
SHARED_TARGET_SIZE = GiB  # the shared-fork targets are judged at this size
SHARED_TARGET_SPEEDUP = 10


# -- small helpers ---------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    """'256M,1G' -> sizes in bytes, each a whole number of 4 KiB pages."""
    try:
        sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    for size in sizes:
        if size <= 0 or size % PAGE:
            raise argparse.ArgumentTypeError(f"size {format_size(size)} is not a positive multiple of 4 KiB")
    return sizes


def summary(forks_ns: list[int]) -> dict:
    """The first fork and the median of all of them, in ms, with the raw timings in ns."""
    return {"first_ms": forks_ns[0] / 1e6, "median_ms": statistics.median(forks_ns) / 1e6, "forks_ns": forks_ns}


# -- the real kernel (ptsim.host.measure times it) -------------------------------------------


def bench_real(size: int, repeat: int) -> dict:
    vmpte_before_kb = read_status()["VmPTE"]
    with TouchedBuffer(size, thp="off") as buf:
        forks, _ = time_forks(buf, repeat)
        vmpte_kb = read_status()["VmPTE"]
    return {**summary(forks), "vmpte_kb": vmpte_kb, "vmpte_buffer_kb": vmpte_kb - vmpte_before_kb}


# -- the simulator ---------------------------------------------------------------------------


def touch(p, addr: int, size: int) -> None:
    """Write every page of the simulated buffer, a chunk at a time."""
    for offset in range(0, size, TOUCH_CHUNK):
        p.write(addr + offset, TOUCH_DATA[: min(TOUCH_CHUNK, size - offset)])


def sim_fork_ns(p) -> tuple[int, object]:
    t0 = time.perf_counter_ns()
    child = p.fork()
    return time.perf_counter_ns() - t0, child


def fresh_forks(p, addr: int, size: int, repeat: int) -> list[int]:
    """Fork `repeat` times a parent that has just written every page; each child exits."""
    forks = []
    for i in range(repeat):
        if i:
            touch(p, addr, size)  # the last child has exited: make every PTE writable again
        elapsed, child = sim_fork_ns(p)
        forks.append(elapsed)
        child.exit()
    return forks


def leaf_entries(m, p, addr: int, size: int) -> np.ndarray:
    """A copy of the parent's last-level tables over the buffer, one row per table."""
    k = m.kernel
    upper = np.concatenate([k.phys.tables[pmd, first:last] for pmd, first, last, _ in k.leaf_slots(p.mm, addr, addr + size)])
    return k.phys.tables[k.pfns_of(upper[(upper & _PAGE_PRESENT) != 0])]


def bench_copy(size: int, repeat: int) -> tuple[dict, np.ndarray, int]:
    """Copy fork; also the host memory per touched page, and the PTEs the floor works on."""
    before = read_status()
    m = ptsim.Machine(arch="x86_64", policy="copy", ram=size + SPARE_RAM)
    p = m.spawn()
    addr = p.mmap(None, size, "rw", False)
    touch(p, addr, size)
    pages = size // PAGE
    after = read_status()
    host = {name: (after[field] - before[field]) * KiB / pages
            for name, field in (("rss_bytes_per_page", "VmRSS"), ("vmpte_bytes_per_page", "VmPTE"))}
    ptes, nframes = leaf_entries(m, p, addr, size), m.kernel.phys.nframes
    forks = fresh_forks(p, addr, size, repeat)
    return {**summary(forks), "vmpte_kb": p.status()["VmPTE"], "host": host}, ptes, nframes


def bench_shared(size: int, repeat: int, policy="shared") -> tuple[dict, dict]:
    """Shared fork: with no other sharer (1 -> 2), and while a first child shares (2 -> 3)."""
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=size + SPARE_RAM)
    p = m.spawn()
    addr = p.mmap(None, size, "rw", False)
    touch(p, addr, size)
    first = fresh_forks(p, addr, size, repeat)
    sharer = p.fork()
    again = []
    for _ in range(repeat):
        elapsed, child = sim_fork_ns(p)
        again.append(elapsed)
        child.exit()
    sharer.exit()
    return summary(first), summary(again)


# -- the floor -------------------------------------------------------------------------------


def bench_floor(ptes: np.ndarray, nframes: int, repeat: int) -> dict:
    """Write-protect `ptes`, copy them, count their pages: what a copy fork cannot skip."""
    child = np.ones_like(ptes)  # written now, as the simulator's frames are before a fork
    refcount = np.ones(nframes, dtype=np.int32)
    clear_rw = np.uint64(~_PAGE_RW & (2**64 - 1))
    pfn_mask, shift = np.uint64(ARCHES["x86_64"].pfn_mask), np.uint64(PFN_SHIFT)
    forks = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        np.bitwise_and(ptes, clear_rw, out=ptes)
        np.copyto(child, ptes)
        refcount[((ptes & pfn_mask) >> shift).astype(np.intp)] += 1
        forks.append(time.perf_counter_ns() - t0)
    return summary(forks)


# -- one size --------------------------------------------------------------------------------


def bench_size(size: int, repeat: int) -> dict:
    """All five figures for one size; each buffer or machine is freed before the next."""
    real = bench_real(size, repeat)
    copy, ptes, nframes = bench_copy(size, repeat)
    gc.collect()
    floor = bench_floor(ptes, nframes, repeat)
    del ptes
    shared_first, shared_again = bench_shared(size, repeat)
    gc.collect()
    upper_wp_first, _ = bench_shared(size, repeat, "upper_wp")
    gc.collect()
    _, every_fork_again = bench_shared(size, repeat, SharedPolicy(wrprotect="every_fork"))
    gc.collect()
    exclusive_first, _ = bench_shared(size, repeat, SharedPolicy(exclusive_at_fork=True))
    gc.collect()
    return {"size": size, "real": real, "copy": copy, "shared_first": shared_first, "shared_again": shared_again,
            "upper_wp_first": upper_wp_first, "floor": floor, "every_fork_again": every_fork_again,
            "exclusive_first": exclusive_first}


# -- the report ------------------------------------------------------------------------------


def print_header(info: dict, args) -> None:
    print(f"machine: Linux {info['kernel']} {info['machine']}, {info['cpus']} CPUs ({info['cpu_model']}), "
          f"{info['mem_total_kb'] >> 20} GiB, THP {info['thp_enabled']}")
    print(f"python {info['python']}, numpy {info['numpy']}, ptsim from {info['ptsim']}, load average {info['load_average']}")
    print(f"ARG sizes {','.join(format_size(s) for s in args.sizes)}")
    print(f"ARG repeat {args.repeat}")
    print(f"ARG json {args.json}")
    print()


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def print_results(results: list[dict], repeat: int) -> None:
    print(f"fork, median of {repeat} (ms)")
    print(f"{'size':>8} {'real':>8} {'copy':>8} {'sh.first':>9} {'sh.again':>9} {'up.first':>9} {'floor':>8} "
          f"{'copy/real':>10} {'copy/sh.first':>14} {'copy/sh.again':>14} {'copy/up.first':>14} {'copy/floor':>11}")
    for r in results:
        keys = ("real", "copy", "shared_first", "shared_again", "upper_wp_first", "floor")
        real, copy, first, again, upper, floor = (r[k]["median_ms"] for k in keys)
        print(f"{format_size(r['size']):>8} {real:8.2f} {copy:8.2f} {first:9.2f} {again:9.3f} {upper:9.3f} {floor:8.2f} "
              f"{ratio(copy, real):>10} {ratio(copy, first):>14} {ratio(copy, again):>14} {ratio(copy, upper):>14} {ratio(copy, floor):>11}")
    print()
    print("the very first fork of each kind (ms); page tables (kB) and host memory per simulated page (B)")
    print(f"{'size':>8} {'real':>8} {'copy':>8} {'sh.first':>9} {'VmPTE real':>11} {'(buffer)':>9} {'VmPTE sim':>10} "
          f"{'host RSS/page':>14} {'host VmPTE/page':>16}")
    for r in results:
        host = r["copy"]["host"]
        print(f"{format_size(r['size']):>8} {r['real']['first_ms']:8.2f} {r['copy']['first_ms']:8.2f} {r['shared_first']['first_ms']:9.2f} "
              f"{r['real']['vmpte_kb']:11} {r['real']['vmpte_buffer_kb']:9} {r['copy']['vmpte_kb']:10} "
              f"{host['rss_bytes_per_page']:14.0f} {host['vmpte_bytes_per_page']:16.1f}")
    print()
    print(f"the sharing policy's switches, median of {repeat} (ms)")
    print(f"{'size':>8} {'again, 1->2':>12} {'again, every':>13} {'first':>8} {'first, excl.':>13} "
          f"{'every/1->2':>11} {'excl./first':>12}")
    for r in results:
        keys = ("shared_again", "every_fork_again", "shared_first", "exclusive_first")
        again, every, first, excl = (r[k]["median_ms"] for k in keys)
        print(f"{format_size(r['size']):>8} {again:12.3f} {every:13.3f} {first:8.2f} {excl:13.2f} "
              f"{ratio(every, again):>11} {ratio(excl, first):>12}")
    print()


def targets(results: list[dict]) -> list[dict]:
    """Each target, what was measured (medians), and whether it was met."""
    found = []
    for r in results:
        real, copy = r["real"]["median_ms"], r["copy"]["median_ms"]
        found.append({"target": f"copy fork no slower than the real kernel's, {format_size(r['size'])}",
                      "measured": f"{copy:.2f} ms vs {real:.2f} ms", "met": copy <= real})
    at = [r for r in results if r["size"] == SHARED_TARGET_SIZE]
    if not at:
        found.append({"target": f"shared fork targets, {format_size(SHARED_TARGET_SIZE)}", "measured": "size not run",
                      "met": None})
        return found
    copy, first, again = (at[0][k]["median_ms"] for k in ("copy", "shared_first", "shared_again"))
    found.append({"target": f"shared first fork {SHARED_TARGET_SPEEDUP}x faster than copy, {format_size(SHARED_TARGET_SIZE)}",
                  "measured": f"{copy / first:.1f}x ({first:.2f} ms vs {copy:.2f} ms)",
                  "met": copy >= SHARED_TARGET_SPEEDUP * first})
    found.append({"target": f"shared fork faster still when already shared, {format_size(SHARED_TARGET_SIZE)}",
                  "measured": f"{copy / again:.1f}x ({again:.3f} ms)", "met": again < first})
    return found


def print_targets(found: list[dict]) -> None:
    print("targets")
    for t in found:
        verdict = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
        print(f"  {t['target']:<56} {t['measured']:<32} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("256M,1G,4G"),
                        help="touched memory per fork, comma-separated, K/M/G suffixes (default 256M,1G,4G)")
    parser.add_argument("--repeat", type=int, default=5, help="forks per figure; the median is reported (default 5)")
    parser.add_argument("--json", metavar="PATH", help="also save every timing, as JSON, to PATH")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    # No collection inside a timed region, and none after a real fork writing to every
    # object's header, which would make the parent copy its own heap.
    gc.disable()
    info = {**machine_info(), "ptsim": os.path.dirname(ptsim.__file__)}
    print_header(info, args)
    bench_size(WARM_UP_SIZE, 2)  # run every timed path once
    results = []
    for size in args.sizes:
        print(f"measuring {format_size(size)} ...", file=sys.stderr, flush=True)
        results.append(bench_size(size, args.repeat))
    print_results(results, args.repeat)
    found = targets(results)
    print_targets(found)
    print(f"\nload average at the end {load_average()}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": {"sizes": args.sizes, "repeat": args.repeat},
                       "results": results, "targets": found}, f, indent=1)


if __name__ == "__main__":
    main()
