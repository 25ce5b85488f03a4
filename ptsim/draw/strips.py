"""Strip pictures: each process's address space, and physical memory frame by frame.

Both read the tables through the kernel's helpers (`leaf_slots`, `slot_table`, `pfns_of`,
`mapped_pages`) and the frame metadata in `mem_map`; neither decides anything the kernel
decides.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch, Rectangle

from ..hardware.arch import _PAGE_PRESENT, _PAGE_PROTNONE, _PAGE_RW
from ..kernel.core import MAPPED
from ..kernel.page import PG_FREE, PG_PGTABLE, PG_RESERVED, ZERO_PFN
from . import style
from ..peek import walk_tables
from .graph import kernel_of, private_writable, tasks_of

# A frame several processes map: one look per frame, none of them the private page's blue.
SHARED_LOOKS = [(c, h) for h in ("", "////", "....", "xxx") for c in (style.ORANGE, style.GREEN, style.PURPLE)]
PRIVATE = style.BLUE
LABELLED_PAGES = 64  # at most this many pages in view, and room for it: each present page shows its frame number


def _ptes(k, mm, start: int, end: int) -> np.ndarray:
    """The last-level entries mapping [start, end), page by page (0 where no table is)."""
    arch, shift = k.arch, k.arch.page_shift
    out = np.zeros((end - start) >> shift, dtype=np.uint64)
    for pmd, first, last, base in k.leaf_slots(mm, start, end):
        for index in range(first, last):
            table = k.slot_table((pmd, index))
            if table is None:
                continue
            lo = max(start, base + index * arch.pte_span)
            hi = min(end, base + (index + 1) * arch.pte_span)
            a = arch.index(arch.levels - 1, lo)
            out[(lo - start) >> shift : (hi - start) >> shift] = k.phys.tables[table, a : a + ((hi - lo) >> shift)]
    return out


def _in_use(tasks) -> list[tuple[int, int]]:
    """The union of every VMA of `tasks`, as sorted disjoint ranges."""
    merged: list[list[int]] = []
    for start, end in sorted((v.start, v.end) for t in tasks for v in t.mm.vmas):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def address_spaces(machine, processes=None, *, ax=None):
    """One strip per process over the address ranges in use (the gaps between them cut
    short): its VMAs, its present pages, and which pages' frames another drawn process maps
    too (the same colour and hatch for the same frame). A red bar under a page: its entry is
    write-protected for copy-on-write."""
    k = kernel_of(machine)
    style.check_ax(ax)
    tasks = tasks_of(machine, processes)
    arch, shift = k.arch, k.arch.page_shift
    ranges = _in_use(tasks)
    pages = sum((e - s) >> shift for s, e in ranges)
    cut = max(1.0, 0.03 * pages)  # room left for a gap between two ranges
    origins, x = [], 0.0
    for s, e in ranges:
        origins.append(x)
        x += ((e - s) >> shift) + cut
    width = max(x - cut, 1.0)

    ptes = {t.pid: [_ptes(k, t.mm, s, e) for s, e in ranges] for t in tasks}
    mappers: dict[int, set[int]] = {}
    for pid, parts in ptes.items():
        for entries in parts:
            for pfn in k.mapped_pages(entries).tolist():
                mappers.setdefault(pfn, set()).add(pid)
    shared = sorted(p for p, who in mappers.items() if len(who) > 1)
    one_look = pages > LABELLED_PAGES or len(shared) > len(SHARED_LOOKS)
    looks = {p: (SHARED_LOOKS[0] if one_look else SHARED_LOOKS[i]) for i, p in enumerate(shared)}

    fig, ax = style.new_figure(ax, height=0.8 * max(len(tasks), 1) + 1.8)
    title = f"address spaces ({arch.name}, policy {machine.policy}; {arch.page_size}-byte pages)"
    if not ranges:
        ax.axis("off")
        ax.set_title(title, fontsize=10)
        ax.text(0.5, 0.5, "no mappings" if tasks else "no live process", ha="center", va="center", fontsize=style.TEXT, transform=ax.transAxes)
        return fig
    small = max(style.SMALL, style.smallest_points(fig))
    # A page's frame number, only where every page has room for the longest one.
    page_pt = 72 * fig.get_figwidth() * 0.9 / (width + 1)
    labelled = pages <= LABELLED_PAGES and style.text_width(str(k.phys.nframes - 1), small) <= 0.8 * page_pt
    used = set()
    for row, task in enumerate(tasks):
        y = -row
        for vma in task.mm.vmas:
            i = next(j for j, (s, e) in enumerate(ranges) if s <= vma.start < e)
            x0 = origins[i] + ((vma.start - ranges[i][0]) >> shift)
            w = (vma.end - vma.start) >> shift
            ax.add_patch(Rectangle((x0, y - 0.4), w, 0.8, facecolor=style.LIGHT, edgecolor=style.INK, linewidth=0.8,
                                   hatch="\\\\\\" if vma.shared else None, zorder=1))
            label = f"{vma.prot or 'PROT_NONE'} {'shared' if vma.shared else 'private'}"
            ax.text(x0 + w / 2, y + 0.32, label, ha="center", va="center", fontsize=small, zorder=4, in_layout=False,
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
            used.add("shared_vma" if vma.shared else "vma")
        for i, entries in enumerate(ptes[task.pid]):
            _draw_pages(ax, k, task.mm, entries, ranges[i][0], origins[i], y, looks, small if labelled else None, used)
    for i, (s, e) in enumerate(ranges):
        if i:
            ax.text(origins[i] - cut / 2, 0.5, "≈", ha="center", va="bottom", fontsize=10, color=style.GREY)
    # Every VMA boundary gets an address, as long as the labels do not run into each other.
    bounds = sorted({b for t in tasks for v in t.mm.vmas for b in (v.start, v.end)})
    at = {b: next(o + ((b - s) >> shift) for o, (s, e) in zip(origins, ranges) if s <= b <= e) for b in bounds}
    room = 0.9 * width / max(1, len(bounds) - 1)  # in pages
    shown = [b for b in bounds if b in {r for pair in ranges for r in pair}] if room * page_pt < 1.2 * style.text_width(f"{bounds[-1]:#x}", small) else bounds
    ax.set_xticks([at[b] for b in shown], [f"{b:#x}" for b in shown], fontsize=small)
    ax.set_yticks([-r for r in range(len(tasks))], [f"pid {t.pid}" for t in tasks], fontsize=style.TEXT)
    ax.set_xlim(-0.5, width + 0.5)
    ax.set_ylim(-len(tasks) + 0.45, 0.65)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_title(title, fontsize=10)
    # One entry per look drawn: each frame several processes map has its own, unless all share one.
    mapped_by = {p: ", ".join(str(pid) for pid in sorted(mappers[p])) for p in shared}
    shared_entries = ([(SHARED_LOOKS[0][0], SHARED_LOOKS[0][1], "frame several drawn processes map")] if one_look else
                      [(looks[p][0], looks[p][1], f"frame {p}, mapped by pid {mapped_by[p]}") for p in shared if ("shared", p) in used])
    legend = [
        ("vma", style.LIGHT, None, "private VMA"), ("shared_vma", style.LIGHT, "\\\\\\", "MAP_SHARED VMA"),
        ("private", PRIVATE, None, "page only this process maps"),
        *(("shared", face, hatch, label) for face, hatch, label in shared_entries),
        ("zero", style.ZERO, None, "the zero page"), ("cow", style.WRPROTECT, None, "RW=0: write-protected for copy-on-write"),
        ("swap", "white", "....", "swapped out"), ("protnone", style.GREY, None, "PROT_NONE entry"),
    ]
    handles = [Patch(facecolor=f, hatch=h or None, edgecolor=style.INK, linewidth=0.5, label=lab) for key, f, h, lab in legend if key in used]
    style.legend(ax, handles, bbox_to_anchor=(0.5, -0.12))
    return fig


def _draw_pages(ax, k, mm, entries, start, origin, y, looks, label_size, used) -> None:
    """Runs of alike pages as one rectangle each, with a red bar under write-protected ones;
    with a `label_size`, each page its own rectangle and its frame number at that size."""
    labelled = label_size is not None
    pfns = k.pfns_of(entries)
    mapped = (entries & MAPPED) != 0
    cow = mapped & ((entries & _PAGE_RW) == 0) & private_writable(k, mm, start, len(entries))
    kinds = []
    for i in range(len(entries)):
        if not entries[i]:
            kinds.append(None)
        elif not mapped[i]:
            kinds.append(("swap", "white", "...."))
        elif not entries[i] & _PAGE_PRESENT and entries[i] & _PAGE_PROTNONE:
            kinds.append(("protnone", style.GREY, None))
        elif pfns[i] == ZERO_PFN:
            kinds.append(("zero", style.ZERO, None))
        elif int(pfns[i]) in looks:
            kinds.append(("shared",) + looks[int(pfns[i])] + ((int(pfns[i]),) if labelled else ()))
        else:
            kinds.append(("private", PRIVATE, None) + ((int(pfns[i]),) if labelled else ()))
    i = 0
    while i < len(kinds):
        j = i + 1
        while j < len(kinds) and kinds[j] == kinds[i] and not labelled:
            j += 1
        if kinds[i] is not None:
            key, face, hatch = kinds[i][:3]
            used.add(key)
            if key == "shared":
                used.add(("shared", int(pfns[i])))
            ax.add_patch(Rectangle((origin + i, y - 0.25), j - i, 0.45, facecolor=face, hatch=hatch or None,
                                   edgecolor="white" if not labelled and key != "swap" else style.INK, linewidth=0.3, zorder=2))
            if labelled and key in ("shared", "private", "zero"):
                plain = not hatch
                ax.text(origin + i + 0.5, y - 0.025, str(int(pfns[i])), ha="center", va="center", fontsize=label_size, zorder=3, in_layout=False,
                        color="white" if plain and face in (PRIVATE, style.PURPLE, style.GREEN) else style.INK,
                        bbox=None if plain else {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})
        i = j
    i = 0
    while i < len(cow):
        if cow[i]:
            j = i
            while j < len(cow) and cow[j]:
                j += 1
            used.add("cow")
            ax.add_patch(Rectangle((origin + i, y - 0.38), j - i, 0.1, facecolor=style.WRPROTECT, edgecolor="none", zorder=3))
            i = j
        else:
            i += 1


# -- physical memory ---------------------------------------------------------------------------

# Owner categories, in legend order; processes follow as OWNERS + rank.
FREE, RESERVED, ZERO, TABLE, SHARED_TABLE, SHARED, CACHE = range(7)
OWNERS = 7
_CATEGORY = {
    FREE: (style.LIGHT, "", "free"),
    RESERVED: (style.BLACK, "R", "reserved (frame 0)"),
    ZERO: (style.ZERO, "Z", "the zero page"),
    TABLE: (style.GREY, "T", "page table"),
    SHARED_TABLE: (style.SHARED, "S", "page table, shared (use count > 1)"),
    SHARED: ("#F7CB73", "+", "page several processes map"),
    CACHE: ("#C8C8C8", "C", "shmem page mapped by nobody (page cache)"),
}
MAX_CELLS = 4096


def frame_owners(machine) -> tuple[np.ndarray, list[int]]:
    """Each frame's owner category, and the pids (by rank) the categories from OWNERS name."""
    k = kernel_of(machine)
    tasks = tasks_of(machine, None)
    mem_map, tables = k.mem_map, k.phys.tables
    n = k.phys.nframes
    owner = np.full(n, -1, dtype=np.int64)
    several = np.zeros(n, dtype=bool)
    leaf = k.arch.levels - 1
    for rank, task in enumerate(tasks):
        mine = set()
        for table, level, _ in walk_tables(k, task.mm.pgd):
            mine.add(table)
            if level == leaf:
                mine.update(k.mapped_pages(tables[table]).tolist())
        pfns = np.fromiter(mine, dtype=np.int64, count=len(mine))
        several[pfns] |= (owner[pfns] != -1) & (owner[pfns] != rank)
        owner[pfns] = np.where(owner[pfns] == -1, rank, owner[pfns])
    kind = mem_map.kind
    codes = np.where(owner >= 0, OWNERS + owner, CACHE)
    codes[several] = SHARED
    codes[kind == PG_PGTABLE] = np.where(mem_map.refcount[kind == PG_PGTABLE] > 1, SHARED_TABLE, TABLE)
    codes[kind == PG_FREE] = FREE
    codes[kind == PG_RESERVED] = RESERVED
    codes[ZERO_PFN] = ZERO
    return codes, [t.pid for t in tasks]


def physical_memory(machine, *, ax=None):
    """Physical memory, one cell per frame (or per bin of frames, for big RAM), coloured by
    owner: a process, several, a page table, the zero page, free, reserved."""
    style.check_ax(ax)
    codes, pids = frame_owners(machine)
    n = len(codes)
    per = 1
    while -(-n // per) > MAX_CELLS:
        per *= 2
    cells = -(-n // per)
    ncats = OWNERS + len(pids)
    if per > 1:  # a bin shows what most of its frames in use hold; free only if all are
        padded = np.concatenate([codes, np.full(cells * per - n, FREE)]).reshape(cells, per)
        counts = np.stack([(padded == c).sum(axis=1) for c in range(ncats)], axis=1)
        counts[:, FREE] = 0
        codes = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), FREE)
    ncols = 8
    while ncols < 128 and cells / ncols > ncols / 3:
        ncols *= 2
    nrows = -(-cells // ncols)
    grid = np.full(nrows * ncols, -1)
    grid[:cells] = codes
    grid = np.ma.masked_less(grid.reshape(nrows, ncols), 0)
    colours = [_CATEGORY[c][0] for c in range(OWNERS)] + [style.process_colour(r) for r in range(len(pids))]
    fig, ax = style.new_figure(ax, height=min(9.0, 9.0 * nrows / ncols + 1.1))
    ax.imshow(grid, cmap=ListedColormap(colours), vmin=-0.5, vmax=ncats - 0.5, interpolation="nearest", aspect="equal")
    if cells <= 1024:
        ax.set_xticks(np.arange(-0.5, ncols), minor=True)
        ax.set_yticks(np.arange(-0.5, nrows), minor=True)
        ax.grid(which="minor", color="white", linewidth=0.8)
        ax.tick_params(which="minor", length=0)
        # A letter or pid in each cell, where the cell has room for it at a readable size (the
        # frame-number labels take about an inch on the left).
        font = max(style.SMALL, style.smallest_points(fig))
        cell_pt = 72 * min((fig.get_figwidth() - 1.2) / ncols, (fig.get_figheight() - 1.3) / nrows)
        for i, c in enumerate(codes.tolist()):
            text = _CATEGORY[c][1] if c < OWNERS else str(pids[c - OWNERS])
            if text and style.text_width(text, font) <= 0.8 * cell_pt and 1.2 * font <= cell_pt:
                ax.text(i % ncols, i // ncols, text, ha="center", va="center", fontsize=font, in_layout=False,
                        color="white" if c == RESERVED or c >= OWNERS else style.INK)
    step = max(1, nrows // 8)
    ax.set_yticks(range(0, nrows, step), [f"frame {r * ncols * per}" for r in range(0, nrows, step)], fontsize=max(style.SMALL, style.smallest_points(fig)))
    ax.set_xticks([])
    k = machine.kernel
    unit = "frame" if per == 1 else f"{per} frames (what most of the used ones hold)"
    ax.set_title(f"physical memory: {n} frames of {k.arch.page_size} bytes; one cell = {unit}", fontsize=10)
    present = set(np.unique(codes).tolist())
    handles = [Patch(facecolor=_CATEGORY[c][0], edgecolor=style.INK, linewidth=0.5, label=_CATEGORY[c][2]) for c in range(OWNERS) if c in present]
    handles += [Patch(facecolor=colours[OWNERS + r], edgecolor=style.INK, linewidth=0.5, label=f"pid {pid} only")
                for r, pid in enumerate(pids) if OWNERS + r in present]
    style.legend(ax, handles)
    return fig
