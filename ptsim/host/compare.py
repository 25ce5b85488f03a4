"""The differences between what the host kernel did and what ptsim did with one scenario.

    python -m ptsim.host.compare scenarios/siblings.txt             # the file, policy copy
    python -m ptsim.host.compare FILE --policy copy --policy shared
    python -m ptsim.host.compare --seed 1 --seed 2 --calls 60        # generated scenarios

Two kinds of difference:

- semantic, for every policy: a line's result (ok, SIGSEGV, ENOMEM), the bytes a read read,
  the address a SIGSEGV stopped at; and at every observation, which (process, page) pairs
  share one physical frame, among the pairs that both kernels map (when the host shows PFNs);
- accounting, for policy `copy` only, which forks as Linux does: each access's minor faults,
  which scenario pages each process maps, and the region's VmPTE and VmRSS. The sharing
  policies map more at fork (every table is shared, MAP_SHARED and zero-page entries with
  it), so a child faults less and counts the shared tables' pages and bytes.

The command prints its arguments, then for each scenario and policy the differences, or
that there are none; its exit status is 1 if there is any difference of a kind the policy is
held to (semantic always, accounting under copy), 2 if a file is bad or the host cannot
play scenarios.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from ..kernel import POLICIES
from .real import HostKernel, host_support
from .scenario import Observation, Outcome, Record, Scenario, generate, parse, play_sim

SHOWN_PAIRS = 4  # pairs named in one sharing difference


@dataclass(frozen=True)
class Difference:
    kind: str  # "semantic" or "accounting"
    line: int | None  # the scenario line, or None for the observation after the last line
    what: str

    def __str__(self) -> str:
        where = "end" if self.line is None else f"line {self.line}"
        return f"{where}: {self.kind}: {self.what}"


def compare(scenario: Scenario, host: Record, sim: Record, policy) -> list[Difference]:
    """Every difference between `host` and `sim`, records of `scenario`; `policy` is the
    policy `sim` was played with (a name, or a policy object), which decides whether
    accounting is compared."""
    policy = getattr(policy, "name", policy)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {sorted(POLICIES)}, not {policy!r}")
    for name, record in (("host", host), ("sim", sim)):
        if len(record.outcomes) != len(scenario.calls):
            raise ValueError(f"{name}: {len(record.outcomes)} outcomes for {len(scenario.calls)} lines: not a record of this scenario")
    accounting = policy == "copy"
    diffs = []
    for call, h, s in zip(scenario.calls, host.outcomes, sim.outcomes):
        if (h.result, h.data, h.address) != (s.result, s.data, s.address):
            diffs.append(Difference("semantic", call.line, f"{call}: host {_outcome(h)}, ptsim {_outcome(s)}"))
        if accounting and h.minflt != s.minflt:
            diffs.append(Difference("accounting", call.line, f"{call}: minor faults: host {h.minflt}, ptsim {s.minflt}"))
    if len(host.observations) != len(sim.observations):
        raise ValueError(f"host has {len(host.observations)} observations, sim {len(sim.observations)}")
    for h, s in zip(host.observations, sim.observations):
        if h.processes.keys() != s.processes.keys():
            diffs.append(Difference("semantic", h.line, f"live processes: host {sorted(h.processes)}, ptsim {sorted(s.processes)}"))
            continue
        if host.frames_known:
            diffs += _sharing(h, s)
        if accounting:
            diffs += _accounting(h, s)
    return diffs


def _outcome(outcome: Outcome) -> str:
    text = outcome.result if outcome.address is None else f"{outcome.result} at {outcome.address:#x}"
    data = outcome.data
    if data:
        text += f", read {data[:24]!r}" + (f"... ({len(data)} bytes)" if len(data) > 24 else "")
    return text


def _sharing(host: Observation, sim: Observation) -> list[Difference]:
    """Pairs mapped by both kernels must fall into the same classes of "one frame"."""
    host_class, sim_class = _classes(host), _classes(sim)
    common = host_class.keys() & sim_class.keys()
    diffs, seen = [], set()
    for pair in sorted(common):
        h = host_class[pair] & common
        s = sim_class[pair] & common
        if h != s and frozenset(h | s) not in seen:
            seen.add(frozenset(h | s))
            diffs.append(
                Difference(
                    "semantic",
                    host.line,
                    f"{_pair(pair)} shares its frame with {_pairs(h - {pair})} on the host, with {_pairs(s - {pair})} in ptsim",
                )
            )
    return diffs


def _classes(observation: Observation) -> dict[tuple[str, int], frozenset]:
    """(process, vpn) -> every pair mapping the same frame."""
    by_frame: dict[int, set] = {}
    for name, view in observation.processes.items():
        for vpn, frame in view.frames.items():
            by_frame.setdefault(frame, set()).add((name, vpn))
    return {pair: frozenset(pairs) for pairs in by_frame.values() for pair in pairs}


def _pair(pair: tuple[str, int]) -> str:
    return f"{pair[0]} {pair[1] * 4096:#x}"


def _pairs(pairs) -> str:
    shown = [_pair(p) for p in sorted(pairs)[:SHOWN_PAIRS]]
    more = len(pairs) - len(shown)
    return "nothing" if not shown else ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _accounting(host: Observation, sim: Observation) -> list[Difference]:
    diffs = []
    for name in sorted(host.processes):
        h, s = host.processes[name], sim.processes[name]
        only_host, only_sim = h.frames.keys() - s.frames.keys(), s.frames.keys() - h.frames.keys()
        if only_host or only_sim:
            diffs.append(
                Difference(
                    "accounting", host.line, f"{name} maps pages {_vpns(only_host)} on the host only, {_vpns(only_sim)} in ptsim only"
                )
            )
        for what, a, b in (("VmPTE", h.vm_pte, s.vm_pte), ("VmRSS", h.vm_rss, s.vm_rss)):
            if a != b:
                diffs.append(Difference("accounting", host.line, f"{name} {what} of the region: host {a} kB, ptsim {b} kB"))
    return diffs


def _vpns(vpns) -> str:
    shown = [f"{v * 4096:#x}" for v in sorted(vpns)[:SHOWN_PAIRS]]
    return "none" if not shown else ", ".join(shown) + (f" and {len(vpns) - len(shown)} more" if len(vpns) > len(shown) else "")


# -- the command -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ptsim.host.compare", description="Play scenarios on the host kernel and on ptsim; print the differences."
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="scenario files (see ptsim/host/scenario.py)")
    parser.add_argument("--policy", action="append", choices=sorted(POLICIES), help="ptsim's fork policy (repeatable; default copy)")
    parser.add_argument("--seed", action="append", type=int, default=[], help="also play the random scenario of this seed (repeatable)")
    parser.add_argument("--calls", type=int, default=40, help="lines of each random scenario (default 40)")
    parser.add_argument("--show", action="store_true", help="print each scenario before its differences")
    args = parser.parse_args(argv)
    policies = args.policy or ["copy"]
    print(f"ARG files {args.files}\nARG policy {policies}\nARG seed {args.seed}\nARG calls {args.calls}")
    if not args.files and not args.seed:
        parser.error("give a FILE or a --seed")
    scenarios = []
    try:
        for path in args.files:
            with open(path) as f:
                scenarios.append((path, parse(f.read())))
        scenarios += [(f"seed {seed}", generate(seed, calls=args.calls)) for seed in args.seed]
    except (OSError, ValueError) as e:
        print(f"error: {e}")
        return 2
    reason = host_support()
    if reason is not None:
        print(f"cannot play scenarios on this host: {reason}")
        return 2
    failed = False
    with HostKernel() as host:
        for name, scenario in scenarios:
            record = host.play(scenario)
            print(f"\n{name}: {len(scenario.calls)} lines on {record.kernel}")
            if args.show:
                print(str(scenario), end="")
            for note in record.notes:
                print(f"  note: {note}")
            for policy in policies:
                diffs = compare(scenario, record, play_sim(scenario, policy), policy)
                failed |= bool(diffs)
                print(f"  ptsim {policy}: " + ("no differences" if not diffs else f"{len(diffs)} difference(s)"))
                for d in diffs:
                    print(f"    {d}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
