"""ptsim.host.measure: a tiny real measurement of this machine's fork, its page tables beside
ptsim's, saving and loading, the fitted cost model, the memory bound and bad arguments."""

import csv
import sys

import numpy as np
import pytest

from ptsim import Machine
from ptsim.hardware import ARCHES
from ptsim.host import measure
from ptsim.host.measure import TABLE_SPAN, GiB, KiB, MiB, Results, Row

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="measures the Linux kernel this runs on")
X86_64 = ARCHES["x86_64"]


@pytest.fixture(scope="module")
def tiny():
    """8 and 16 MiB, THP off and on, and 64 MiB sparse, 2 forks each, with every progress call recorded."""
    calls = []
    results = measure.run(sizes=["8M", 16 * MiB], repeats=2, progress=lambda *call: calls.append(call),
                          sparse_sizes=["64M"])
    return results, calls


@linux_only
def test_tiny_run_measures_every_size_and_mode_in_order(tiny):
    results, calls = tiny
    huge_pages_possible = measure.thp_setting("enabled") not in (None, "never")
    modes = ("off", "on") if huge_pages_possible else ("off",)
    assert [(r.size, r.thp, r.sparse) for r in results.rows] == [
        *((s, m, False) for s in (8 * MiB, 16 * MiB) for m in modes), (64 * MiB, "off", True)]
    for r in results.rows:
        assert len(r.fork_ns) == len(r.fork_wait_ns) == results.repeats == 2
        assert all(0 < f < w for f, w in zip(r.fork_ns, r.fork_wait_ns))  # the wait comes after the fork
        assert r.address % (2 * MiB) == 0
        assert r.vmpte_parent_kb > r.vmpte_buffer_kb
        assert r.tables == r.size // (2 * MiB)
    assert all(r.anon_huge_kb == 0 and r.ptes == r.size // 4096 for r in results.rows if r.thp == "off" and not r.sparse)
    [sparse] = [r for r in results.rows if r.sparse]
    assert sparse.ptes == sparse.tables == 32 and sparse.stride == TABLE_SPAN
    assert sparse.vmpte_buffer_kb >= 4 * sparse.tables  # one PTE in each, but every table is there
    assert [c[:2] for c in calls] == [(i, len(results.rows)) for i in range(len(results.rows) + 1)]
    assert "8 MiB, THP off" in calls[1][2] and "64 MiB, sparse, THP off" in calls[-1][2]


@linux_only
def test_thp_on_reports_the_huge_pages_the_kernel_gave(tiny):
    results, _ = tiny
    if measure.thp_setting("enabled") in (None, "never"):
        assert {(s.thp, "transparent huge pages are" in s.reason) for s in results.skipped} == {("on", True)}
        return
    for r in (r for r in results.rows if r.thp == "on"):
        assert 0 <= r.anon_huge_kb * KiB <= r.size
        assert r.ptes == (r.size - r.anon_huge_kb * KiB) // 4096


@linux_only
def test_measured_vmpte_is_ptsims_less_the_upper_tables_the_process_had(tiny):
    """The slack, measured: ptsim's process maps only the buffer, so its VmPTE also counts the
    pud and the pmds above it (a pud maps 512 GiB, a pmd 1 GiB); the interpreter's process
    already had some of them for its own mappings. Every last-level table is counted in both,
    and in the child, which copies them (THP on: deposits one beside each huge PMD)."""
    results, _ = tiny
    for r in results.rows:
        end = r.address + r.size - 1
        upper = sum(end // X86_64.span(level) - r.address // X86_64.span(level) + 1 for level in (1, 2))
        assert r.predicted_vmpte_kb == 4 * (r.tables + upper)
        assert 4 * r.tables <= r.vmpte_buffer_kb <= r.predicted_vmpte_kb
        assert r.vmpte_child_kb >= 4 * r.tables


@pytest.mark.parametrize("address, size", [(0x7F00_0000_0000, 8 * MiB), (0x7F00_3FF0_1000, 5 * MiB + 12 * KiB)])
def test_prediction_from_a_read_per_table_equals_touching_every_page(address, size):
    p = Machine(arch="x86_64", ram=16 * MiB).spawn()
    p.mmap(address, size, "rw", False)
    for page in range(address, address + size, 4096):
        p.write(page, b"x")
    assert measure.predict_vmpte_kb(address, size) == p.status()["VmPTE"]


@linux_only
def test_save_then_load_gives_the_same_results_from_csv_and_json(tiny, tmp_path):
    results, _ = tiny
    results.skipped.append(measure.Skipped(4 * GiB, "on", "an example reason, with a comma"))
    try:
        csv_path, json_path = measure.save(results, tmp_path / "out")
    finally:
        results.skipped.pop()
    loaded = [measure.load(csv_path), measure.load(json_path), measure.load(tmp_path / "out")]
    assert all(r.skipped[-1].reason == "an example reason, with a comma" for r in loaded)
    for r in loaded:
        r.skipped.pop()
        assert r == results
    with open(csv_path) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert [float(r["fork_ms"]) for r in rows] == [r.fork_ms for r in results.rows]


def synthetic(fixed_ms, ns_per_pte, us_per_table, modes=("off", "on"), noise=0.0):
    """Rows whose latencies follow the model exactly (or with seeded relative noise); mode
    "sparse" is THP off with one page written per 2 MiB."""
    rng = np.random.default_rng(7)
    rows = []
    for size in measure.default_sizes():
        for mode in modes:
            row = Row(size, "on" if mode == "on" else "off", 0, [0], [0], 0, 0, 0, size // KiB if mode == "on" else 0, 0,
                      TABLE_SPAN if mode == "sparse" else 4096)
            ms = fixed_ms + ns_per_pte * row.ptes / 1e6 + us_per_table * row.tables / 1e3
            row.fork_ns = [round(ms * 1e6 * (1 + noise * rng.standard_normal()))]
            row.fork_wait_ns = [2 * row.fork_ns[0]]
            rows.append(row)
    return Results(rows, repeats=1)


def test_fit_recovers_known_coefficients():
    model = measure.fit(synthetic(0.4, 51.0, 1.5))
    assert (model.fixed_ms, model.ns_per_pte, model.us_per_table) == pytest.approx((0.4, 51.0, 1.5), rel=1e-6)
    assert model.r2 == pytest.approx(1.0) and model.points == 14
    noisy = measure.fit(synthetic(0.4, 51.0, 1.5, noise=0.01), "fork_wait")
    assert (noisy.ns_per_pte, noisy.us_per_table) == pytest.approx((102.0, 3.0), rel=0.05)


def test_fit_tells_the_table_cost_from_sparse_rows_without_huge_pages():
    model = measure.fit(synthetic(0.4, 51.0, 1.5, modes=("off", "sparse")))
    assert (model.fixed_ms, model.ns_per_pte, model.us_per_table) == pytest.approx((0.4, 51.0, 1.5), rel=1e-6)
    assert model.at_zero == ()


def test_fit_holds_a_cost_that_least_squares_makes_negative_at_zero():
    """Latencies that fall with the number of tables: least squares alone fits -1 us per
    table; the fit holds that at 0, says so, and refits the other costs."""
    results = synthetic(0.4, 51.0, -1.0)
    ptes = np.array([r.ptes for r in results.rows]) / 1e6
    tables = np.array([r.tables for r in results.rows]) / 1e3
    x = np.column_stack([np.ones_like(ptes), ptes, tables])
    free, *_ = np.linalg.lstsq(x, results.latency_ms("fork"), rcond=None)
    assert free[2] == pytest.approx(-1.0)
    model = measure.fit(results)
    assert model.us_per_table == 0 and model.at_zero == ("per table",)
    assert model.fixed_ms > 0 and model.ns_per_pte > 0
    assert str(model).endswith("held at 0: per table)")
    two, *_ = np.linalg.lstsq(x[:, :2], results.latency_ms("fork"), rcond=None)
    assert (model.fixed_ms, model.ns_per_pte) == pytest.approx(tuple(two))


def kkt_holds(x, y, coef):
    """Karush-Kuhn-Tucker for min |x c - y|^2 with c >= 0: no negative coefficient, the
    gradient 0 where a coefficient is positive and not negative where it is 0."""
    gradient = x.T @ (x @ coef - y)
    scale = np.abs(x.T @ y).max()
    return bool((coef >= 0).all() and all(g >= -1e-9 * scale if c == 0 else abs(g) <= 1e-9 * scale
                                          for c, g in zip(coef, gradient)))


def test_nonnegative_lstsq_is_least_squares_when_no_coefficient_is_negative():
    x = np.column_stack([np.ones(5), np.arange(5.0), np.arange(5.0) ** 2])
    y = x @ [1.0, 2.0, 0.5]
    assert measure.nonnegative_lstsq(x, y) == pytest.approx([1.0, 2.0, 0.5])


def test_nonnegative_lstsq_holds_a_negative_slope_at_zero():
    x = np.column_stack([np.ones(3), [0.0, 1.0, 2.0]])
    y = np.array([2.0, 1.0, 0.0])  # least squares: 2 - 1 * x
    assert np.linalg.lstsq(x, y, rcond=None)[0] == pytest.approx([2.0, -1.0])
    assert measure.nonnegative_lstsq(x, y) == pytest.approx([1.0, 0.0])  # the mean, flat


@pytest.mark.parametrize("seed", range(20))
def test_nonnegative_lstsq_meets_the_optimality_conditions(seed):
    """Random problems of 1 to 4 columns, many of them with a negative unconstrained
    coefficient: the answer is feasible and optimal (KKT), and no worse than any other
    non-negative point tried."""
    rng = np.random.default_rng(seed)
    k = 1 + seed % 4
    x = rng.standard_normal((12, k))
    y = rng.standard_normal(12)
    coef = measure.nonnegative_lstsq(x, y)
    assert kkt_holds(x, y, coef)
    sse = ((x @ coef - y) ** 2).sum()
    for other in np.abs(rng.standard_normal((200, k))):
        assert sse <= ((x @ other - y) ** 2).sum() + 1e-12


def test_fit_without_huge_pages_folds_the_table_cost_into_the_pte_cost():
    model = measure.fit(synthetic(0.4, 51.0, 1.5, modes=("off",)))
    assert model.us_per_table is None
    assert (model.fixed_ms, model.ns_per_pte) == pytest.approx((0.4, 51.0 + 1500 / 512), rel=1e-6)
    assert "per table" not in str(model) and "ns per PTE" in str(model)


@linux_only
def test_sizes_beyond_the_memory_limit_are_skipped_with_the_reason():
    results = measure.run(sizes=["8M", "64M"], repeats=1, thp=("off",), memory_limit=measure.memory_needed(8 * MiB),
                          progress=None)
    assert [r.size for r in results.rows] == [8 * MiB]
    [skip] = results.skipped
    assert (skip.size, skip.thp) == (64 * MiB, "off")
    assert "needs 0.06 GiB" in skip.reason and "memory_limit" in skip.reason


def test_a_sparse_size_needs_a_page_and_two_tables_per_2_mib():
    assert measure.memory_needed(1 * GiB, TABLE_SPAN) == 512 * 4096 + 2 * MiB + 2 * 512 * 4096
    assert measure.memory_needed(1 * GiB) == 1 * GiB + 2 * MiB + 2 * 512 * 4096


@linux_only
def test_a_sparse_mapping_larger_than_memtotal_is_skipped_with_the_reason():
    results = measure.run(sizes=["8M"], repeats=1, thp=("off",), memory_limit=1 << 50, progress=None,
                          sparse_sizes=["1T"])
    assert [r.size for r in results.rows] == [8 * MiB]
    [skip] = results.skipped
    assert (skip.size, skip.thp) == (1 << 40, "off")
    assert skip.reason == "sparse: a mapping of 1024 GiB is more than MemTotal, which Linux may refuse to map"


@linux_only
def test_by_default_the_limit_is_half_of_memavailable_or_what_this_machines_cgroup_leaves():
    """On this machine, as it is: where its memory cgroup leaves less than half of MemAvailable
    (a hub, a container), the cgroup's figure; otherwise half of MemAvailable."""
    results = measure.run(sizes=["1T"], repeats=1, thp=("off",), progress=None)
    half, cgroup = measure.meminfo_kb("MemAvailable") * KiB / 2, measure.cgroup_memory_left()
    [skip] = results.skipped
    assert results.rows == []
    if cgroup is None or cgroup[0] >= half:
        assert "(half of MemAvailable" in skip.reason
        assert results.memory_limit == pytest.approx(half, rel=0.2)
    else:
        assert "(what this process's memory cgroup leaves: " in skip.reason
        assert results.memory_limit == pytest.approx(cgroup[0], rel=0.2, abs=16 * MiB)


def fake_cgroups(tmp_path, proc_lines, files):
    """A /proc/self/cgroup of `proc_lines` and a /sys/fs/cgroup holding `files` ({path: text});
    returns the two paths, as cgroup_memory_left takes them."""
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("".join(line + "\n" for line in proc_lines))
    fs = tmp_path / "sys-fs-cgroup"
    fs.mkdir()
    for name, text in files.items():
        (fs / name).parent.mkdir(parents=True, exist_ok=True)
        (fs / name).write_text(text + "\n")
    return proc, fs


HUB_USER = "user.slice/user-1000.slice/jupyter-alice.service"  # where a systemd spawner puts a user


@pytest.mark.parametrize("proc_lines, files, left, where", [
    # cgroup v2 alone: the user's own limit, with no limit above it
    (["0::/" + HUB_USER], {f"{HUB_USER}/memory.max": str(GiB), f"{HUB_USER}/memory.current": str(256 * MiB),
                          "user.slice/memory.max": "max", "user.slice/memory.current": str(5 * GiB)},
     768 * MiB, f"memory.max 1.00 GiB less memory.current 0.25 GiB, {{fs}}/{HUB_USER}"),
    # a cgroup above the user's leaves less than the user's own
    (["0::/" + HUB_USER], {f"{HUB_USER}/memory.max": str(2 * GiB), f"{HUB_USER}/memory.current": str(GiB // 2),
                          "user.slice/memory.max": str(GiB), "user.slice/memory.current": str(3 * GiB // 4)},
     GiB // 4, "memory.max 1.00 GiB less memory.current 0.75 GiB, {fs}/user.slice"),
    # memory.high below memory.max: above it the kernel throttles the process
    (["0::/hub"], {"hub/memory.max": str(2 * GiB), "hub/memory.high": str(GiB), "hub/memory.current": str(GiB // 2)},
     GiB // 2, "memory.high 1.00 GiB less memory.current 0.50 GiB, {fs}/hub"),
    # over the limit already: nothing left
    (["0::/hub"], {"hub/memory.max": str(GiB), "hub/memory.current": str(GiB + 4096)},
     0, "memory.max 1.00 GiB less memory.current 1.00 GiB, {fs}/hub"),
    # a container seeing only its own cgroup at the mount's top, under a longer path
    (["0::/kubepods/pod42/abc"], {"memory.max": str(GiB), "memory.current": str(GiB // 4)},
     3 * GiB // 4, "memory.max 1.00 GiB less memory.current 0.25 GiB, {fs}"),
    # cgroup v1 beside an empty v2 hierarchy (hybrid): memory.limit_in_bytes of the memory controller
    (["12:pids:/hub", "4:memory:/hub/alice", "0::/hub/alice"],
     {"memory/hub/alice/memory.limit_in_bytes": str(512 * MiB), "memory/hub/alice/memory.usage_in_bytes": str(128 * MiB),
      "memory/hub/memory.limit_in_bytes": "9223372036854771712", "memory/hub/memory.usage_in_bytes": str(GiB),
      "unified/hub/alice/cgroup.procs": "1"},
     384 * MiB, "memory.limit_in_bytes 0.50 GiB less memory.usage_in_bytes 0.12 GiB, {fs}/memory/hub/alice"),
])
def test_cgroup_memory_left_is_the_tightest_limit_less_its_usage(tmp_path, proc_lines, files, left, where):
    proc, fs = fake_cgroups(tmp_path, proc_lines, files)
    assert measure.cgroup_memory_left(proc, fs) == (left, where.format(fs=fs))


@pytest.mark.parametrize("proc_lines, files", [
    (["0::/hub"], {"hub/memory.max": "max", "hub/memory.high": "max", "hub/memory.current": str(GiB)}),
    (["0::/"], {"cgroup.procs": "1"}),  # the root: no memory.max at all
    (["4:cpu,cpuacct:/hub"], {"cpu,cpuacct/hub/memory.limit_in_bytes": str(GiB)}),  # not the memory controller
    ([], {}),
])
def test_cgroup_memory_left_is_none_without_a_memory_limit(tmp_path, proc_lines, files):
    proc, fs = fake_cgroups(tmp_path, proc_lines, files)
    assert measure.cgroup_memory_left(proc, fs) is None
    assert measure.cgroup_memory_left(tmp_path / "no-such-file", fs) is None


@linux_only
def test_by_default_a_small_cgroup_limit_skips_the_sizes_it_cannot_hold(tmp_path, monkeypatch):
    """A hub user limited to 1 GiB, using 0.25 GiB: 0.75 GiB left, less than half of this
    machine's MemAvailable; 8 MiB runs, 1 GiB is skipped and the reason names the cgroup."""
    proc, fs = fake_cgroups(tmp_path, ["0::/hub"], {"hub/memory.max": str(GiB), "hub/memory.current": str(GiB // 4)})
    real = measure.cgroup_memory_left
    monkeypatch.setattr(measure, "cgroup_memory_left", lambda: real(proc, fs))
    if measure.meminfo_kb("MemAvailable") * KiB // 2 <= 3 * GiB // 4:
        pytest.skip("half of this machine's MemAvailable is already below the fake cgroup's 0.75 GiB")
    results = measure.run(sizes=["8M", "1G"], repeats=1, thp=("off",), progress=None)
    assert results.memory_limit == 3 * GiB // 4
    assert [r.size for r in results.rows] == [8 * MiB]
    [skip] = results.skipped
    assert skip.size == GiB and "more than the limit of 0.75 GiB (what this process's memory cgroup leaves: " \
        "memory.max 1.00 GiB less memory.current 0.25 GiB" in skip.reason


def test_default_memory_limit_is_half_of_memavailable_below_a_looser_cgroup(monkeypatch):
    monkeypatch.setattr(measure, "meminfo_kb", lambda name: {"MemAvailable": 4 * GiB // KiB}[name])
    monkeypatch.setattr(measure, "cgroup_memory_left", lambda: (3 * GiB, "memory.max ..."))
    assert measure.default_memory_limit() == (2 * GiB, "half of MemAvailable, 4.00 GiB")
    monkeypatch.setattr(measure, "cgroup_memory_left", lambda: None)
    assert measure.default_memory_limit() == (2 * GiB, "half of MemAvailable, 4.00 GiB")
    monkeypatch.setattr(measure, "cgroup_memory_left", lambda: (GiB, "memory.max ..."))
    assert measure.default_memory_limit() == (GiB, "what this process's memory cgroup leaves: memory.max ...")


@pytest.mark.parametrize("kwargs, name", [
    ({"sizes": [3 * MiB]}, "sizes"), ({"sizes": "64M"}, "sizes"), ({"sizes": []}, "sizes"),
    ({"sizes": ["lots"]}, "sizes"), ({"sizes": [8 * MiB, "8M"]}, "sizes"), ({"sizes": [True]}, "sizes"),
    ({"repeats": 0}, "repeats"), ({"repeats": 1.5}, "repeats"), ({"repeats": True}, "repeats"),
    ({"thp": "on"}, "thp"), ({"thp": ("off", "off")}, "thp"), ({"thp": ("huge",)}, "thp"), ({"thp": ()}, "thp"),
    ({"memory_limit": 0}, "memory_limit"), ({"memory_limit": "1G"}, "memory_limit"),
    ({"sparse_sizes": "64M"}, "sparse_sizes"), ({"sparse_sizes": [3 * MiB]}, "sparse_sizes"),
    ({"sparse_sizes": ["8M", "8M"]}, "sparse_sizes"),
])
def test_bad_run_arguments_raise_value_error_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}\b"):
        measure.run(**{"sizes": ["8M"], "progress": None, **kwargs})


def test_other_bad_arguments_raise_value_error_naming_the_argument(tmp_path):
    with pytest.raises(ValueError, match="^max_size"):
        measure.default_sizes(64 * MiB, 32 * MiB)
    with pytest.raises(ValueError, match="^min_size"):
        measure.default_sizes(MiB)
    with pytest.raises(ValueError, match="^results"):
        measure.fit(Results(synthetic(0.4, 51.0, 1.5).rows[:1]))
    with pytest.raises(ValueError, match="^latency"):
        measure.fit(synthetic(0.4, 51.0, 1.5), "exit")
    with pytest.raises(ValueError, match="^path"):
        measure.load(tmp_path / "results.txt")
    with pytest.raises(ValueError, match="^x must"):
        measure.nonnegative_lstsq(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="^stride"):
        measure.TouchedBuffer(2 * MiB, "off", stride=8192)


def test_run_elsewhere_than_linux_says_it_needs_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(RuntimeError, match="needs Linux.*darwin"):
        measure.run(sizes=["8M"], progress=None)


@linux_only
def test_plot_draws_both_modes_and_the_prediction(tiny):
    import matplotlib.pyplot as plt

    results, _ = tiny
    model = measure.fit(results)
    fig = measure.plot(results, model)
    try:
        ax_time, ax_pte = fig.axes
        labels = [line.get_label() for line in ax_time.lines]
        assert {"fork, every page, THP off", "fork, one page per 2 MiB, THP off", "fitted fork"} <= set(labels)
        [predicted] = [line for line in ax_pte.lines if line.get_label().startswith("ptsim")]
        assert list(predicted.get_ydata()) == sorted({r.predicted_vmpte_kb for r in results.rows})
    finally:
        plt.close(fig)


@linux_only
def test_command_prints_the_table_and_saves_it(tmp_path, capsys):
    results = measure.main(["--min-size", "8M", "--max-size", "16M", "--repeats", "2", "--thp", "off",
                            "--sparse", "32M", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert out.startswith("ARG min_size 8 MiB\nARG max_size 16 MiB\n")
    assert "   8 MiB   every off" in out and "  16 MiB   every off" in out and "  32 MiB  sparse off" in out
    assert "ns per PTE" in out and "us per table" in out
    assert measure.load(tmp_path) == results
    assert (tmp_path / "fork_cost.png").stat().st_size > 0


@linux_only
def test_progress_bar_follows_the_run():
    bar = measure.ProgressBar()
    results = measure.run(sizes=["8M"], repeats=1, thp=("off",), progress=bar)
    assert (bar.bar.value, bar.bar.max) == (1, 1) == (len(results.rows), 1)
    assert bar.label.value.startswith("8 MiB, THP off")
