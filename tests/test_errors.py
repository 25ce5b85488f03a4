"""Bad input, forbidden accesses, dead processes and exhausted memory: a clear error, no change."""

import array
import re

import pytest

import ptsim
from ptsim.hardware.arch import _PAGE_ACCESSED, _PAGE_DIRTY
from ptsim.kernel import CopyPolicy, SharedPolicy
from ptsim.kernel.swap import SwapDevice

PAGE = 4096
TASK_SIZE = ptsim.ARCHES["x86_64"].task_size
A = 0x4000_0000  # the test region: 4 pages
FREE = 1 << 40  # mapped by nobody, under a root entry of its own
B = 0x8000_0000  # the filler's region


# -- helpers -----------------------------------------------------------------------------


def machine(policy="copy", ram=8 << 20):
    m = ptsim.Machine(arch="x86_64", policy=policy, ram=ram)
    p = m.spawn()
    p.mmap(A, 4 * PAGE)
    p.write(A, b"page 0")
    p.write(A + 2 * PAGE, b"page 2")
    return m, p


def process_state(p):
    """What a process sees: status, faults, VMAs, and each page's entry, frame and bytes."""
    if p.exited:
        return (p.pid, "exited")
    k, pages = p.machine.kernel, []
    ad = _PAGE_ACCESSED | _PAGE_DIRTY  # the walks that read the bytes set these
    for vma in p.mm.vmas:
        for addr in range(vma.start, vma.end, PAGE):
            pa = p.translate(addr)
            data = p.read(addr, PAGE) if pa is not None and vma.readable else None
            pages.append((addr, k.follow_pte(p.mm, addr) & ~ad, pa, data))
    vmas = [(v.start, v.end, v.prot, v.shared) for v in p.mm.vmas]
    return (p.pid, p.status(), p.minflt, vmas, pages)


def state(m, procs):
    """Everything a failed call must leave as it was."""
    mem_map = m.kernel.mem_map
    frames = (mem_map.refcount.tolist(), mem_map.mapcount.tolist(), mem_map.kind.tolist())
    return (m.free_frames, m.counters, frames, m.kernel.swap.snapshot(), [process_state(p) for p in procs])


def assert_refused(m, procs, call, error, match=None):
    """`call` raises `error` and the machine is exactly as it was."""
    before = state(m, procs)
    with pytest.raises(error, match=match) as info:
        call()
    assert state(m, procs) == before
    m.check()
    return info.value


def word(name):
    return rf"\b{re.escape(name)}\b"


# -- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"arch": "arm64"}, "arch"),
        ({"arch": None}, "arch"),
        ({"policy": "cow"}, "policy"),
        ({"ram": 0}, "ram"),
        ({"ram": -(8 << 20)}, "ram"),
        ({"ram": (8 << 20) + 1}, "ram"),
        ({"ram": 8.0 * (1 << 20)}, "ram"),
        ({"ram": True}, "ram"),
        ({"ram": "8M"}, "ram"),
        ({"ram": 4 * PAGE}, "ram"),  # too few frames for a machine
        ({"arch": ["x86_64"]}, "arch"),  # unhashable: no TypeError from the ARCHES lookup
        ({"policy": ["copy"]}, "policy"),
        ({"policy": 3}, "policy"),
        ({"policy": CopyPolicy}, "policy"),  # the class, not a policy object
        ({"arch": "i386", "ram": (4 << 30) + PAGE}, "ram"),  # one frame past 20-bit frame numbers
        ({"arch": "toy", "ram": (64 << 40) + 64}, "ram"),  # past 40-bit frame numbers of 64-byte pages
        ({"ram": 1 << 50}, "ram"),  # within x86_64's reach, but no host reserves 1 PiB
    ],
)
def test_machine_rejects_bad_argument_naming_it(kwargs, name):
    with pytest.raises(ValueError, match=word(name)):
        ptsim.Machine(**kwargs)


def test_i386_machine_of_exactly_the_frame_number_reach_works():
    """4 GiB: its last frame, 2**20 - 1, holds the first table (tables come from the top)."""
    try:
        m = ptsim.Machine(arch="i386", policy="shared", ram=4 << 30)
    except ValueError as error:  # a host that does not overcommit 4 GiB of zeroes
        pytest.skip(str(error))
    p = m.spawn()
    a = p.mmap(None, 1 << 22)
    p.write(a, b"hi")
    c = p.fork()
    c.write(a, b"ho")
    assert (p.read(a, 2), c.read(a, 2)) == (b"hi", b"ho")
    assert m.kernel.mem_map.kind[(1 << 20) - 1] != 0, "the top frame is in use"


def test_machine_takes_a_policy_object():
    m = ptsim.Machine(policy=SharedPolicy(), ram=8 << 20)
    p = m.spawn()
    p.mmap(A, PAGE)
    p.write(A, b"x")
    p.fork()
    assert m.policy == "shared" and m.counters["tables_shared"] == 1


BAD_CALLS = {
    "mmap unaligned addr": (lambda p: p.mmap(FREE + 1, PAGE), "addr"),
    "mmap addr not an int": (lambda p: p.mmap(str(FREE), PAGE), "addr"),
    "mmap zero length": (lambda p: p.mmap(FREE, 0), "length"),
    "mmap negative length": (lambda p: p.mmap(FREE, -PAGE), "length"),
    "mmap anywhere zero length": (lambda p: p.mmap(None, 0), "length"),
    "mmap anywhere longer than user space": (lambda p: p.mmap(None, TASK_SIZE), "length"),
    "mmap past user space": (lambda p: p.mmap(TASK_SIZE - PAGE, 2 * PAGE), "addr"),
    "mmap below mmap_min_addr": (lambda p: p.mmap(0, PAGE), "addr"),
    "mmap bad prot": (lambda p: p.mmap(FREE, PAGE, "x"), "prot"),
    "mmap write-only prot": (lambda p: p.mmap(FREE, PAGE, "w"), "prot"),
    "mmap shared not a bool": (lambda p: p.mmap(FREE, PAGE, "rw", 1), "shared"),
    "munmap unaligned addr": (lambda p: p.munmap(A + 1, PAGE), "addr"),
    "munmap zero length": (lambda p: p.munmap(A, 0), "length"),
    "munmap negative length": (lambda p: p.munmap(A, -1), "length"),
    "munmap float length": (lambda p: p.munmap(A, 1.5), "length"),
    "munmap past user space": (lambda p: p.munmap(TASK_SIZE - PAGE, 2 * PAGE), "addr"),
    "mprotect unaligned addr": (lambda p: p.mprotect(A + 8, PAGE, "r"), "addr"),
    "mprotect zero length": (lambda p: p.mprotect(A, 0, "r"), "length"),
    "mprotect bad prot": (lambda p: p.mprotect(A, PAGE, "rwx"), "prot"),
    "mprotect unmapped range": (lambda p: p.mprotect(FREE, PAGE, "r"), "addr"),
    "mprotect range running off its vma": (lambda p: p.mprotect(A, 8 * PAGE, "r"), "addr"),
    "madvise bad advice": (lambda p: p.madvise(A, PAGE, "free"), "advice"),
    "madvise negative length": (lambda p: p.madvise(A, -PAGE, "dontneed"), "length"),
    "madvise unmapped range": (lambda p: p.madvise(FREE, PAGE, "dontneed"), "addr"),
    "read negative addr": (lambda p: p.read(-PAGE, 1), "addr"),
    "read negative length": (lambda p: p.read(A, -1), "length"),
    "write negative addr": (lambda p: p.write(-1, b"x"), "addr"),
    "translate past user space": (lambda p: p.translate(TASK_SIZE), "vaddr"),
    "translate negative": (lambda p: p.translate(-1), "vaddr"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_argument_raises_value_error_naming_it_and_changes_nothing(case):
    call, name = BAD_CALLS[case]
    m, p = machine()
    assert_refused(m, [p], lambda: call(p), ValueError, word(name))


@pytest.mark.parametrize("data", [3, 0, [1, 2], {1}, range(4), "text", None, 1.5, bytes], ids=repr)
def test_write_takes_only_bytes_like_data(data):
    m, p = machine()
    assert_refused(m, [p], lambda: p.write(A, data), TypeError, word("data"))


def test_write_takes_bytes_bytearray_and_memoryview():
    m, p = machine()
    p.write(A, bytearray(b"ab"))
    p.write(A + 2, memoryview(b"--cd")[2:])
    p.write(A + 4, memoryview(array.array("H", [0x6665])))  # any format: its bytes, little-endian
    assert p.read(A, 6) == b"abcdef"


def test_swap_out_rejects_another_machines_process():
    m, p = machine()
    other, q = machine()
    assert_refused(m, [p], lambda: m.swap_out(q, A), ValueError, word("process"))
    assert_refused(other, [q], lambda: m.swap_out(q, A), ValueError, word("process"))
    assert_refused(m, [p], lambda: m.swap_out(p.pid, A), ValueError, word("process"))


@pytest.mark.parametrize("addr", [None, str(A), float(A), True, -PAGE, TASK_SIZE], ids=repr)
def test_swap_out_rejects_bad_addr(addr):
    m, p = machine()
    assert_refused(m, [p], lambda: m.swap_out(p, addr), ValueError, word("addr"))


def test_swap_out_takes_an_unmapped_or_unaligned_user_address():
    m, p = machine()
    assert m.swap_out(p, FREE) is False
    assert m.swap_out(p, A + 2 * PAGE + 5) is True
    assert p.read(A + 2 * PAGE, 6) == b"page 2"


def test_refused_mprotect_does_not_split_the_vma():
    m, p = machine()
    with pytest.raises(ValueError, match="unmapped"):
        p.mprotect(A + PAGE, 8 * PAGE, "r")
    assert [(v.start, v.end, v.prot) for v in p.mm.vmas] == [(A, A + 4 * PAGE, "rw")]


def test_read_rejects_bool_length():
    m, p = machine()
    assert_refused(m, [p], lambda: p.read(A, True), ValueError, word("length"))


# -- segmentation faults -----------------------------------------------------------------


def segfault(m, p, call):
    return assert_refused(m, [p], call, ptsim.SegmentationFault)


def test_write_to_read_only_mapping_is_a_segmentation_fault():
    m, p = machine()
    r = p.mmap(FREE, PAGE, "r")
    assert p.read(r, 1) == b"\0"
    fault = segfault(m, p, lambda: p.write(r + 8, b"x"))
    assert fault.address == r + 8 and "PROT_WRITE" in fault.reason


def test_read_of_prot_none_mapping_is_a_segmentation_fault():
    m, p = machine()
    p.mprotect(A, PAGE, "")
    fault = segfault(m, p, lambda: p.read(A + 3, 1))
    assert fault.address == A + 3 and "PROT_NONE" in fault.reason


@pytest.mark.parametrize("write", [False, True])
def test_access_to_unmapped_memory_is_a_segmentation_fault(write):
    m, p = machine()
    call = (lambda: p.write(FREE + 5, b"x")) if write else (lambda: p.read(FREE + 5, 1))
    fault = segfault(m, p, call)
    assert fault.address == FREE + 5 and "no mapping" in fault.reason


def test_access_beyond_user_space_is_a_segmentation_fault():
    m, p = machine()
    fault = segfault(m, p, lambda: p.read(TASK_SIZE, 1))
    assert fault.address == TASK_SIZE and "user space" in fault.reason


def test_multi_page_write_whose_last_page_is_unmapped_writes_nothing():
    m, p = machine()
    start = A + 2 * PAGE + 100  # pages 2 (written before) and 3 (untouched), then unmapped memory
    fault = segfault(m, p, lambda: p.write(start, b"y" * (2 * PAGE)))
    assert fault.address == A + 4 * PAGE and "no mapping" in fault.reason
    assert p.read(A + 2 * PAGE, 6) == b"page 2" and p.read(start, 4) == bytes(4)
    assert p.translate(A + 3 * PAGE) is None, "no page was faulted in"


# -- exited processes --------------------------------------------------------------------

CALLS = {
    "mmap": lambda p: p.mmap(FREE, PAGE),
    "munmap": lambda p: p.munmap(A, PAGE),
    "mprotect": lambda p: p.mprotect(A, PAGE, "r"),
    "madvise": lambda p: p.madvise(A, PAGE, "dontneed"),
    "fork": lambda p: p.fork(),
    "exec": lambda p: p.exec(),
    "exit": lambda p: p.exit(),
    "read": lambda p: p.read(A, 1),
    "write": lambda p: p.write(A, b"x"),
    "translate": lambda p: p.translate(A),
    "status": lambda p: p.status(),
}


@pytest.mark.parametrize("policy", ["copy", "shared"])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_call_on_exited_process_raises_process_exited(call, policy):
    m, p = machine(policy)
    sibling = p.fork()
    p.exit()
    assert p.exited and "exited" in repr(p)
    assert_refused(m, [p, sibling], lambda: CALLS[call](p), ptsim.ProcessExited, f"process {p.pid}")


# -- out of memory -----------------------------------------------------------------------

SMALL = 64 * PAGE  # 62 usable frames


def small(policy):
    return machine(policy, ram=SMALL)


def exhaust(m, leave):
    """A filler process takes frames, one page at a time, until exactly `leave` are free."""
    filler = m.spawn()
    b = filler.mmap(B, 512 * PAGE)
    i = 0
    while m.free_frames > leave:
        filler.write(b + i * PAGE, b"filler")
        i += 1
    assert m.free_frames == leave
    return filler


def forked(policy):
    m, p = small(policy)
    return m, p, p.fork()


def scenario_write_new_page(policy):
    m, p = small(policy)
    return m, [p], lambda: p.write(A + PAGE, b"new")


def scenario_read_needing_tables(policy):
    m, p = small(policy)
    p.mmap(FREE, PAGE)
    return m, [p], lambda: p.read(FREE, 1)


def scenario_fork(policy):
    m, p = small(policy)
    return m, [p], lambda: p.fork()


def scenario_exec(policy):
    m, p, c = forked(policy)
    return m, [p, c], lambda: c.exec()


def scenario_write_unsharing(policy):
    m, p, c = forked(policy)
    return m, [p, c], lambda: p.write(A, b"new")


def scenario_mprotect_unsharing(policy):
    m, p, c = forked(policy)
    return m, [p, c], lambda: p.mprotect(A, PAGE, "r")


def scenario_munmap_unsharing(policy):
    m, p, c = forked(policy)
    return m, [p, c], lambda: p.munmap(A, PAGE)


def scenario_madvise_unsharing(policy):
    m, p, c = forked(policy)
    return m, [p, c], lambda: p.madvise(A, PAGE, "dontneed")


def scenario_mmap_fixed_unsharing(policy):
    m, p, c = forked(policy)
    return m, [p, c], lambda: p.mmap(A, PAGE, "r")


SCENARIOS = {name[len("scenario_") :]: f for name, f in list(globals().items()) if name.startswith("scenario_")}

# (scenario, policy, frames left free): every `leave` below what the call needs.
OOM_CASES = (
    [("write_new_page", policy, 0) for policy in ("copy", "shared")]
    + [("read_needing_tables", policy, leave) for policy in ("copy", "shared") for leave in range(3)]
    + [("fork", "copy", leave) for leave in range(4)]  # pgd, pud, pmd, pte
    + [("fork", "shared", leave) for leave in range(3)]  # pgd, pud, pmd: the pte table is shared
    + [("exec", policy, 0) for policy in ("copy", "shared")]
    + [("write_unsharing", "shared", leave) for leave in range(2)]  # a table, then a page
    + [("write_unsharing", "copy", 0)]
    + [(name, "shared", 0) for name in ("mprotect_unsharing", "munmap_unsharing", "madvise_unsharing", "mmap_fixed_unsharing")]
)


@pytest.mark.parametrize("case, policy, leave", OOM_CASES)
def test_out_of_memory_leaves_machine_exactly_as_it_was(case, policy, leave):
    m, procs, call = SCENARIOS[case](policy)
    filler = exhaust(m, leave)
    assert_refused(m, procs + [filler], call, ptsim.OutOfMemory)


@pytest.mark.parametrize("case, policy", sorted({(case, policy) for case, policy, _ in OOM_CASES}))
def test_call_that_ran_out_of_memory_succeeds_once_memory_is_freed(case, policy):
    m, procs, call = SCENARIOS[case](policy)
    filler = exhaust(m, 0)
    with pytest.raises(ptsim.OutOfMemory):
        call()
    filler.exit()
    call()
    m.check()
    for p in procs:
        if not p.exited and p.mm.find_vma(A + 2 * PAGE):
            assert p.read(A + 2 * PAGE, 6) == b"page 2"


def test_spawn_that_runs_out_of_memory_changes_nothing_and_consumes_no_pid():
    m, p = small("copy")
    filler = exhaust(m, 0)
    assert_refused(m, [p, filler], m.spawn, ptsim.OutOfMemory)
    assert sorted(m.kernel.tasks) == [p.pid, filler.pid]
    filler.exit()
    assert m.spawn().pid == filler.pid + 1
    m.check()


def test_fork_that_runs_out_of_memory_consumes_no_pid():
    m, p = small("copy")
    filler = exhaust(m, 0)
    with pytest.raises(ptsim.OutOfMemory):
        p.fork()
    filler.exit()
    assert p.fork().pid == filler.pid + 1


# -- swap slots --------------------------------------------------------------------------


def test_swap_slots_are_reused_lowest_first_and_slot_0_never():
    swap = SwapDevice(8)  # slots 1 to 7
    assert [swap.store(b"%d" % i) for i in range(7)] == list(range(1, 8))
    full = swap.snapshot()
    with pytest.raises(ptsim.OutOfMemory, match="swap is full"):
        swap.store(b"one too many")
    assert swap.snapshot() == full
    swap.put([5, 2])
    swap.dup([3])
    swap.put([3])  # still held once
    assert [swap.store(b"a"), swap.store(b"b")] == [2, 5]
    assert swap.data[2] == b"a" and swap.count == dict.fromkeys(range(1, 8), 1)


def test_swap_restore_is_exact_free_slots_included():
    swap = SwapDevice(1 << 20)
    for _ in range(6):
        swap.store(b"x")
    swap.put([4, 2])
    snap = swap.snapshot()
    swap.put([1])
    swap.store(b"y")
    swap.store(b"z")
    swap.restore(snap)
    assert swap.snapshot() == snap
    assert [swap.store(b"p"), swap.store(b"q"), swap.store(b"r")] == [2, 4, 7]


def test_i386_swap_outlives_2_20_swap_outs():
    """The slot lives in i386's 20-bit PFN field: a device that never reused a slot would
    overflow it after 2**20 swap-outs. The allocator alone, then the whole path."""
    m = ptsim.Machine(arch="i386", ram=8 << 20)
    swap = m.kernel.swap
    assert swap.nr_slots == 1 << 20
    for _ in range((1 << 20) + 16):
        slot = swap.store(b"")
        swap.put([slot])
    assert slot == 1 and swap.count == {}
    p = m.spawn()
    a = p.mmap(None, PAGE)
    p.write(a, b"page")
    slots = set()
    for _ in range(200):
        with m.trace() as events:
            assert m.swap_out(p, a)
        slots |= {e.detail["slot"] for e in events if e.action == "swap_out_page"}
        assert p.read(a, 4) == b"page"
    assert slots == {1} and p.majflt == 200
    m.check()


def test_swap_out_with_swap_full_raises_out_of_memory_and_changes_nothing():
    m = ptsim.Machine(arch="i386", ram=8 << 20)
    m.kernel.swap = SwapDevice(3)  # slots 1 and 2 only
    p = m.spawn()
    a = p.mmap(None, 4 * PAGE)
    for i in range(3):
        p.write(a + i * PAGE, b"page %d" % i)
    assert m.swap_out(p, a) and m.swap_out(p, a + PAGE)
    assert_refused(m, [p], lambda: m.swap_out(p, a + 2 * PAGE), ptsim.OutOfMemory, "swap is full")
    assert p.read(a, 6) == b"page 0"  # its slot is free again
    assert m.swap_out(p, a + 2 * PAGE)
    assert [p.read(a + i * PAGE, 6) for i in range(3)] == [b"page %d" % i for i in range(3)]
    m.check()


# -- traces ------------------------------------------------------------------------------


def actions(events):
    return [(e.func, e.action, e.addr) for e in events]


def test_nested_traces_each_get_every_event_while_open():
    m, p = machine()
    with m.trace() as outer:
        p.write(A + PAGE, b"1")
        n = len(outer)
        with m.trace() as inner:
            p.write(A + 3 * PAGE, b"3")
            assert inner and outer[n:] == inner, "both filled as the events come"
        p.munmap(A, PAGE)
    assert n and len(outer) > n + len(inner) and outer[n : n + len(inner)] == inner
    assert m.kernel.tracer.events is None


def test_traces_closed_out_of_order_lose_nothing():
    m, p = machine()
    first, second = m.trace(), m.trace()
    outer = first.__enter__()
    p.write(A + PAGE, b"1")
    inner = second.__enter__()
    p.write(A + 3 * PAGE, b"3")
    first.__exit__(None, None, None)  # the outer one first
    p.munmap(A, PAGE)
    second.__exit__(None, None, None)
    p.write(A + 2 * PAGE, b"not traced")
    assert m.kernel.tracer.events is None
    one, three = [e for e in outer if e.addr == A + PAGE], [e for e in outer if e.addr == A + 3 * PAGE]
    assert one and three and len(outer) == len(one) + len(three)
    assert actions(inner[: len(three)]) == actions(three)
    assert {e.func for e in inner[len(three) :]} >= {"do_munmap"}


def test_traces_of_a_call_that_ran_out_of_memory_keep_no_event_of_it():
    m, p = small("copy")
    filler = exhaust(m, 2)
    with m.trace() as outer:
        filler.munmap(B, PAGE)  # events; a third frame free: fork gets a pgd, pud and pmd, then runs out
        kept = list(outer)
        with m.trace() as inner, m.trace() as innermost:
            with pytest.raises(ptsim.OutOfMemory):
                p.fork()
        assert outer == kept and inner == innermost == []
    assert kept and m.kernel.tracer.events is None
    m.check()


# -- Process.mm: a read-only view ------------------------------------------------------


@pytest.mark.parametrize("name", ["pgd", "pcid", "owner", "vmas", "rss", "swapents", "pgtables_bytes", "find_vma", "_process", "new"])
def test_mm_view_refuses_assignment_and_deletion(name):
    m, p = machine()
    mm = p.mm
    assert_refused(m, [p], lambda: setattr(mm, name, 0), AttributeError, "read-only")
    assert_refused(m, [p], lambda: delattr(mm, name), AttributeError, "read-only")


def test_changing_a_vma_of_the_view_changes_nothing_in_the_kernel():
    m, p = machine()
    r = p.mmap(FREE, PAGE, "r")
    vma = p.mm.find_vma(r)
    with pytest.raises(AttributeError):
        vma.prot = "rw"
    object.__setattr__(vma, "prot", "rw")  # past the frozen dataclass: only the copy changes
    with pytest.raises(AttributeError):
        p.mm.vmas[0].end = A + 8 * PAGE
    with pytest.raises(TypeError):
        p.mm.vmas[0] = vma
    assert p.mm.find_vma(r).prot == "r"
    assert [(v.start, v.end, v.prot) for v in p.mm.vmas] == [(A, A + 4 * PAGE, "rw"), (FREE, FREE + PAGE, "r")]
    segfault(m, p, lambda: p.write(r, b"x"))


def test_mm_view_reads_what_the_kernel_has():
    m, p = machine("shared")
    c = p.fork()
    assert m.swap_out(c, A)
    k = m.kernel
    for proc in (p, c):
        mm, real = proc.mm, proc._task.mm
        assert (mm.pgd, mm.pcid, mm.owner) == (real.pgd, real.pcid, proc.pid)
        status = proc.status()
        assert [mm.vm_size(), mm.rss * PAGE, mm.pgtables_bytes, mm.swapents * PAGE] == [status[f] * 1024 for f in ("VmSize", "VmRSS", "VmPTE", "VmSwap")]
        assert [(v.start, v.end, v.prot, v.shared, v.anon_vma) for v in mm.vmas] == [(v.start, v.end, v.prot, v.shared, v.anon_vma) for v in real.vmas]
        assert mm.vmas_in(A, A + PAGE) == mm.vmas and mm.find_vma(FREE) is None
        assert mm.find_vma(A).readable and mm.find_vma(A).writable and mm.find_vma(A + PAGE).pgoff_of(A + PAGE, 12) == 1
        # kernel read functions take the view as their mm
        assert k.pmd_slot(mm, A) == k.pmd_slot(real, A)
        assert [k.follow_pte(mm, A + i * PAGE) for i in range(4)] == [k.follow_pte(real, A + i * PAGE) for i in range(4)]
        assert list(k.leaf_slots(mm, 0, TASK_SIZE)) == list(k.leaf_slots(real, 0, TASK_SIZE))
        assert k.mmu.walk(mm.pgd, A + 2 * PAGE, False) == k.mmu.walk(real.pgd, A + 2 * PAGE, False)
    assert (p.mm.swapents, c.mm.swapents) == (1, 1), "a shared table's swap entry counts in each sharer"
    m.check()


def test_mm_view_follows_exec_and_ends_with_exit():
    m, p = machine()
    mm = p.mm
    old = mm.pgd, mm.pcid
    p.exec()
    assert (mm.pgd, mm.pcid) != old and mm.vmas == () and mm.pcid == p.mm.pcid
    p.exit()
    assert p.mm is None and "exited" in repr(mm)
    with pytest.raises(ptsim.ProcessExited, match=f"process {p.pid}"):
        mm.pgd
