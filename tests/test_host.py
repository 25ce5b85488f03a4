"""ptsim against the host's own kernel: the same scenarios played on both (ptsim/host).

The hand-written scenarios in scenarios/ and many seeded random ones are played on the host
kernel and on ptsim under every policy (and `shared` with its other switches), and must show
no difference at all: every result, byte read and SIGSEGV; which (process, page) pairs share
a frame; and, for copy, every access's minor faults, the pages each process maps, and the
region's VmPTE and VmRSS.

Playing on the host needs Linux on x86-64 with glibc, and comparing frames needs pagemap's
PFNs (root). Where either is missing, only what needs it skips, with the reason; CI runs as
root on Linux, so there everything runs. The parser, the generator and `compare` are tested
everywhere.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
from pathlib import Path

import pytest

import ptsim
from ptsim.host import real
from ptsim.host import scenario as sc
from ptsim.host.compare import compare, main
from ptsim.host.procfs import PM_PRESENT, pagemap_frames, read_pagemap, read_region_rss, read_status
from ptsim.host.real import HostKernel, host_support
from ptsim.host.scenario import REGION_START, Call, Scenario, generate, parse, play_sim
from ptsim.kernel.fork import SharedPolicy
from ptsim.kernel.mm import MM

ROOT = Path(__file__).resolve().parent.parent
HAND_WRITTEN = sorted((ROOT / "scenarios").glob("*.txt"))
RANDOM_SEEDS = range(150)
RANDOM_CALLS = 50
# Every policy, and sharing with a read fault that unshares and write-protection at every fork.
HELD_POLICIES = {**ptsim.POLICIES, "shared/hugh": SharedPolicy(read_fault="unshare", wrprotect="every_fork")}
NO_HOST = host_support()
needs_host = pytest.mark.skipif(NO_HOST is not None, reason=f"cannot play scenarios on the host kernel: {NO_HOST}")
needs_linux = pytest.mark.skipif(not Path("/proc/self/pagemap").exists(), reason="the host has no Linux /proc")
MPROTECT_OVER_A_HOLE = ROOT / "scenarios" / "known-differences" / "mprotect-over-a-hole.txt"


@pytest.fixture(scope="module")
def host():
    with HostKernel() as kernel:
        yield kernel


def differences(scenario, record, policies=HELD_POLICIES) -> list[str]:
    out = []
    for label in policies:
        policy = HELD_POLICIES[label]
        out += [f"{label}: {d}" for d in compare(scenario, record, play_sim(scenario, policy), policy)]
    return out


def assert_plays_the_same(host, scenario) -> None:
    record = host.play(scenario)
    diffs = differences(scenario, record)
    assert not diffs, "\n".join(diffs) + "\n\n" + str(scenario)
    if not record.frames_known:
        pytest.skip("pagemap hides PFNs from this user (CAP_SYS_ADMIN needed): which pages share a frame was not compared; all else agreed")


# -- the host and ptsim agree ----------------------------------------------------------------


@needs_host
@pytest.mark.parametrize("path", HAND_WRITTEN, ids=lambda p: p.stem)
def test_hand_written_scenario_plays_the_same_on_the_host_and_ptsim(host, path):
    assert_plays_the_same(host, parse(path.read_text()))


@needs_host
@pytest.mark.parametrize("seed", RANDOM_SEEDS)
def test_random_scenario_plays_the_same_on_the_host_and_ptsim(host, seed):
    assert_plays_the_same(host, generate(seed, calls=RANDOM_CALLS))


@needs_host
def test_without_fault_around_ptsim_counts_faults_the_host_does_not(host, monkeypatch):
    scenario = parse((ROOT / "scenarios" / "fault-around.txt").read_text())
    record = host.play(scenario)
    monkeypatch.setattr(sc, "LINUX_FAULT_AROUND_BYTES", sc.PAGE)
    diffs = differences(scenario, record, ["copy"])
    assert "copy: line 12: accounting: p1 read 0x200000005000 6: minor faults: host 0, ptsim 1" in diffs, diffs


@needs_host
def test_without_vma_merging_ptsim_counts_faults_the_host_does_not(host, monkeypatch):
    scenario = parse((ROOT / "scenarios" / "vma-merge.txt").read_text())
    record = host.play(scenario)
    monkeypatch.setattr(MM, "vma_merge", lambda *args: None)
    diffs = differences(scenario, record, ["copy"])
    assert "copy: line 14: accounting: p1 read 0x200000200000 1: minor faults: host 0, ptsim 1" in diffs, diffs


@needs_host
def test_mprotect_over_a_hole_is_a_difference_compare_reports(host):
    scenario = parse(MPROTECT_OVER_A_HOLE.read_text())
    record = host.play(scenario)
    assert record.outcomes[2].result == "ENOMEM"
    diffs = differences(scenario, record)
    for policy in HELD_POLICIES:
        assert f'{policy}: line 8: semantic: p0 write 0x200000000000 "x": host SIGSEGV at 0x200000000000, ptsim ok' in diffs


# -- the command ---------------------------------------------------------------------------


@needs_host
def test_command_prints_no_differences_and_exits_0(capsys):
    assert main([str(ROOT / "scenarios" / "siblings.txt"), "--seed", "3", "--calls", "20", "--policy", "copy", "--policy", "upper_wp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ARG files")
    assert out.count("no differences") == 4


@needs_host
def test_command_prints_a_difference_and_exits_1(capsys):
    assert main([str(MPROTECT_OVER_A_HOLE)]) == 1
    assert "line 8: semantic" in capsys.readouterr().out


def test_command_needs_a_file_or_a_seed(capsys):
    with pytest.raises(SystemExit) as exit:
        main([])
    assert exit.value.code == 2
    assert "give a FILE or a --seed" in capsys.readouterr().err


def test_command_names_the_bad_line_of_a_file(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text("p0 mmap 0x2000_0000_0000 4K rw private\np0 jump\n")
    assert main([str(path)]) == 2
    assert "line 2: 'jump' is not a call" in capsys.readouterr().out


# -- nothing left running ------------------------------------------------------------------


def agents_of_this_test() -> list[int]:
    """Pids of the zygotes and agents descending from this process."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), []):
            todo.append(pid)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"_serve_zygote" in f.read():
                        found.append(pid)
            except OSError:
                pass
    return found


@needs_host
def test_every_agent_is_reaped_after_a_scenario_and_after_a_failure(monkeypatch):
    scenario = parse((ROOT / "scenarios" / "siblings.txt").read_text())
    before = set(agents_of_this_test())  # the module's HostKernel, if it is up
    with HostKernel() as kernel:
        zygote = set(agents_of_this_test())
        assert len(zygote - before) == 1
        kernel.play(scenario)
        assert set(agents_of_this_test()) == zygote
        calls, original = [0], real._Remote.call

        def fail_at_the_tenth_call(self, *message):
            calls[0] += 1
            if calls[0] == 10:
                raise RuntimeError("planted failure")
            return original(self, *message)

        monkeypatch.setattr(real._Remote, "call", fail_at_the_tenth_call)
        with pytest.raises(RuntimeError, match="planted failure"):
            kernel.play(scenario)
        assert set(agents_of_this_test()) == zygote
    assert set(agents_of_this_test()) == before


# -- compare -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def siblings():
    scenario = parse((ROOT / "scenarios" / "siblings.txt").read_text())
    return scenario, play_sim(scenario, "copy")


def replace_outcome(record, index, **changes):
    outcomes = list(record.outcomes)
    outcomes[index] = dataclasses.replace(outcomes[index], **changes)
    return dataclasses.replace(record, outcomes=outcomes)


def replace_view(record, observation, process, **changes):
    observations = list(record.observations)
    views = dict(observations[observation].processes)
    views[process] = dataclasses.replace(views[process], **changes)
    observations[observation] = dataclasses.replace(observations[observation], processes=views)
    return dataclasses.replace(record, observations=observations)


def line_of(scenario, text):
    return next(i for i, c in enumerate(scenario.calls) if str(c) == text)


def test_compare_finds_no_difference_between_a_record_and_itself(siblings):
    scenario, record = siblings
    assert compare(scenario, record, record, "copy") == []


def test_compare_reports_a_planted_byte(siblings):
    scenario, record = siblings
    i = line_of(scenario, "p1 read 0x2000001ff000 8")
    planted = replace_outcome(record, i, data=b"\x12" + record.outcomes[i].data[1:])
    (diff,) = compare(scenario, planted, record, "shared")
    assert (diff.kind, diff.line) == ("semantic", scenario.calls[i].line)
    assert "host ok, read b'\\x12\\x11" in diff.what and "ptsim ok, read b'\\x11\\x11" in diff.what


def test_compare_reports_a_planted_sigsegv(siblings):
    scenario, record = siblings
    i = line_of(scenario, 'p0 write 0x200000000000 "parent"')
    planted = replace_outcome(record, i, result="SIGSEGV", address=REGION_START)
    (diff,) = compare(scenario, planted, record, "shared")
    assert diff.what.endswith("host SIGSEGV at 0x200000000000, ptsim ok")


def test_compare_holds_only_copy_to_fault_counts_and_figures(siblings):
    scenario, record = siblings
    i = line_of(scenario, 'p0 write 0x200000000000 "parent"')
    planted = replace_view(replace_outcome(record, i, minflt=record.outcomes[i].minflt + 1), 0, "p1", vm_pte=0, vm_rss=4)
    assert compare(scenario, planted, record, "shared") == []
    assert [(d.kind, d.line) for d in compare(scenario, planted, record, "copy")] == [
        ("accounting", scenario.calls[i].line),
        ("accounting", scenario.calls[4].line),
        ("accounting", scenario.calls[4].line),
    ]


def test_compare_reports_a_planted_page_mapped_by_one_kernel_only(siblings):
    scenario, record = siblings
    frames = dict(record.observations[0].processes["p2"].frames)
    del frames[min(frames)]
    (diff,) = compare(scenario, replace_view(record, 0, "p2", frames=frames), record, "copy")
    assert diff.what == "p2 maps pages none on the host only, 0x200000000000 in ptsim only"


def test_compare_reports_pages_that_share_a_frame_in_one_kernel_only(siblings):
    scenario, record = siblings
    last = len(record.observations) - 1
    view = record.observations[last].processes["p2"]
    vpn = REGION_START // 4096 + 0x300  # in the second table: p2 shares it with p3
    frames = dict(view.frames)
    frames[vpn] = 1 + max(f for v in record.observations[last].processes.values() for f in v.frames.values())  # its own
    planted = replace_view(record, last, "p2", frames=frames)
    (diff,) = compare(scenario, planted, record, "shared")
    assert diff.kind == "semantic" and diff.line is None
    assert diff.what == "p2 0x200000300000 shares its frame with nothing on the host, with p3 0x200000300000 in ptsim"
    assert compare(scenario, dataclasses.replace(planted, frames_known=False), record, "shared") == []


def test_compare_rejects_a_record_of_another_scenario(siblings):
    scenario, record = siblings
    with pytest.raises(ValueError, match="host: 19 outcomes for 5 lines"):
        compare(Scenario(scenario.calls[:5]), record, record, "copy")
    with pytest.raises(ValueError, match="policy must be one of"):
        compare(scenario, record, record, "cow")


# -- playing on ptsim ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["copy", "shared", "upper_wp"])
def test_ptsim_keeps_its_invariants_through_the_scenarios(policy):
    for path in HAND_WRITTEN:
        play_sim(parse(path.read_text()), policy, check=True)
    for seed in range(3):
        play_sim(generate(seed, calls=RANDOM_CALLS), policy, check=True)


def test_generated_scenarios_do_what_the_issue_asks():
    """Over a few seeds: forks of forks, exits, shared mappings, munmap and mprotect across a
    2 MiB boundary, reads of untouched pages, and SIGSEGVs, seen in ptsim's records."""
    seen = set()
    for seed in range(20):
        scenario = generate(seed, calls=RANDOM_CALLS)
        record = play_sim(scenario)
        children = {c.child for c in scenario.calls if c.op == "fork"}
        for call, outcome in zip(scenario.calls, record.outcomes):
            crosses = call.addr // (2 << 20) != (call.addr + call.length - 1) // (2 << 20)
            seen |= {
                ("fork of a fork", call.op == "fork" and call.process in children),
                ("exit", call.op == "exit"),
                ("shared mmap", call.op == "mmap" and call.shared),
                ("munmap across 2 MiB", call.op == "munmap" and crosses),
                ("mprotect across 2 MiB", call.op == "mprotect" and crosses),
                (
                    "read of an untouched page",
                    call.op == "read" and outcome.result == "ok" and outcome.minflt > 0 and not any(outcome.data),
                ),
                ("SIGSEGV", outcome.result == "SIGSEGV"),
            }
    wanted = {
        "fork of a fork",
        "exit",
        "shared mmap",
        "munmap across 2 MiB",
        "mprotect across 2 MiB",
        "read of an untouched page",
        "SIGSEGV",
    }
    assert {what for what, happened in seen if happened} == wanted


def test_generate_is_deterministic_and_its_text_parses_back():
    first = generate(7)
    assert str(first) == str(generate(7)) != str(generate(8))
    again = parse(str(first))
    assert [dataclasses.replace(c, line=0) for c in again.calls] == [dataclasses.replace(c, line=0) for c in first.calls]


@pytest.mark.parametrize(
    "kwargs, word", [({"seed": "1"}, "seed"), ({"seed": 1, "calls": 0}, "calls"), ({"seed": 1, "max_processes": True}, "max_processes")]
)
def test_generate_rejects_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate(**kwargs)


def test_play_sim_rejects_a_text():
    with pytest.raises(ValueError, match="scenario must be a Scenario"):
        play_sim("p0 exit")


# -- the format ----------------------------------------------------------------------------


def test_parse_reads_every_kind_of_line():
    s = parse(
        "# a comment\n"
        "p0 mmap 0x2000_0000_0000 5000 rw private  # rounds up to 2 pages\n"
        'p0 write 0x2000_0000_0010 "a\\x00\\"b"\n'
        "p0 write 0x2000_0000_1000 0xab*2K\n"
        "\n"
        "p0 fork p1\n"
        "p1 mprotect 0x2000_0000_0000 4K none\n"
        "p1 read 35184372088832 16\n"
        "p0 mmap 0x2000_0020_0000 1M r shared\n"
        "p1 munmap 0x2000_0000_0000 1M\n"
        "p1 exit\n"
        "observe\n"
    )
    assert [(c.line, c.op) for c in s.calls] == [
        (2, "mmap"),
        (3, "write"),
        (4, "write"),
        (6, "fork"),
        (7, "mprotect"),
        (8, "read"),
        (9, "mmap"),
        (10, "munmap"),
        (11, "exit"),
        (12, "observe"),
    ]
    mmap, text, fill, fork, mprotect, read, shared, munmap, _, _ = s.calls
    assert (mmap.addr, mmap.length, mmap.prot, mmap.shared) == (REGION_START, 8192, "rw", False)
    assert (text.addr, text.payload()) == (REGION_START + 16, b'a\x00"b')
    assert (fill.length, fill.payload()) == (2048, b"\xab" * 2048)
    assert (fork.process, fork.child) == ("p0", "p1")
    assert (mprotect.prot, read.addr, read.length) == ("", REGION_START, 16)
    assert (shared.prot, shared.shared, munmap.length) == ("r", True, 1 << 20)
    assert s.pages() == [(REGION_START // 4096, 2), (REGION_START // 4096 + 512, 256)]


BAD_LINES = {
    "unaligned mmap": ("p0 mmap 0x2000_0000_0001 4K rw private", "line 1: address 0x200000000001 is not aligned"),
    "outside the region": ("p0 mmap 0x1000 4K rw private", "line 1: [0x1000, 0x2000) is outside the scenario region"),
    "read past the region": ("p0 read 0x207f_ffff_fff0 32", "is outside the scenario region"),
    "bad prot": ("p0 mmap 0x2000_0000_0000 4K rwx private", "line 1: prot must be one of rw, r, none, not 'rwx'"),
    "bad kind": ("p0 mmap 0x2000_0000_0000 4K rw public", "mapping kind must be 'private' or 'shared'"),
    "bad number": ("p0 mmap 0x2000_0000_0000 4Q rw private", "length '4Q' is not a number"),
    "zero length": ("p0 munmap 0x2000_0000_0000 0", "length must be positive, not 0"),
    "too much memory": ("p0 mmap 0x2000_0000_0000 64M rw private", "cover more than 32M of distinct pages"),
    "unknown process": ("p1 read 0x2000_0000_0000 8", "process p1 does not exist (fork it first)"),
    "exited process": ("p0 fork p1\np1 exit\np1 read 0x2000_0000_0000 8", "line 3: process p1 has exited"),
    "name taken": ("p0 fork p0", "process name p0 is already taken"),
    "bad child name": ("p0 fork child", "'child' is not a process name such as p1"),
    "bad process name": ("P0 exit", "'P0' is not a process name such as p0 or p1, nor observe"),
    "unknown call": ("p0 jump", "'jump' is not a call: one of mmap, munmap"),
    "missing argument": ("p0 read 0x2000_0000_0000", "read takes 2 argument(s), not 1"),
    "long read": ("p0 read 0x2000_0000_0000 65537", "read length must be 1 to 65536 bytes, not 65537"),
    "unterminated string": ('p0 write 0x2000_0000_0000 "abc', "unterminated string"),
    "bad escape": ('p0 write 0x2000_0000_0000 "\\x4"', "bad string"),
    "empty string": ('p0 write 0x2000_0000_0000 ""', "a string must hold 1 to 65536 bytes, not 0"),
    "bad data": ("p0 write 0x2000_0000_0000 abc", 'write data must be a "TEXT" or BYTE*LENGTH'),
    "big fill byte": ("p0 write 0x2000_0000_0000 0x1ff*4", "fill byte must be 0 to 255, not 511"),
    "observe with an argument": ("observe p0", "observe takes no argument"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_parse_names_the_bad_line_and_what_is_wrong(case):
    text, message = BAD_LINES[case]
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        parse(text)
    assert str(error.value).startswith("line ")


def test_parse_counts_lines_from_one_comments_and_blanks_included():
    with pytest.raises(ValueError, match=r"^line 3: 'jump' is not a call"):
        parse("# comment\n\np0 jump\n")


def test_parse_rejects_what_is_not_text():
    with pytest.raises(ValueError, match="text must be a str"):
        parse(b"p0 exit")


def test_call_text_is_what_parses_back():
    call = Call(1, "p0", "write", REGION_START, 3, data=b"'\"\n")
    assert parse(str(call)).calls[0].payload() == b"'\"\n"


# -- /proc ---------------------------------------------------------------------------------


def test_pagemap_frames_decodes_present_entries_only():
    raw = struct.pack("<4Q", 0, PM_PRESENT | 1234, 1 << 62, PM_PRESENT | (1 << 56) | 7)  # empty, mapped, swapped, exclusive
    assert pagemap_frames(raw, 100) == {101: 1234, 103: 7}
    with pytest.raises(ValueError, match="raw: 5 bytes"):
        pagemap_frames(raw[:5], 0)


@needs_linux
def test_proc_readers_see_this_process_touch_pages():
    import ctypes
    import mmap

    buf = mmap.mmap(-1, 8 * 4096)  # MAP_SHARED | MAP_ANONYMOUS: a VMA of its own
    view = ctypes.c_char.from_buffer(buf)
    addr = ctypes.addressof(view)
    del view
    try:
        buf[0:1] = b"x"
        buf[3 * 4096 : 3 * 4096 + 1] = b"y"
        frames = pagemap_frames(read_pagemap(addr // 4096, 8), addr // 4096)
        assert sorted(frames) == [addr // 4096, addr // 4096 + 3]
        assert read_region_rss(addr, addr + 8 * 4096) == 8
        assert read_status()["VmRSS"] > 0
    finally:
        buf.close()
    with pytest.raises(ValueError, match="vpn must be"):
        read_pagemap(-1, 1)
