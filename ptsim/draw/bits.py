"""One page-table entry, field by field, as Intel's manual draws it (SDM vol. 3, 4.5): bit 63
(or 31) on the left, the PFN from bit 12, the flags in the low bits.

Every position comes from `ptsim.hardware.arch` (the `_PAGE_*` bits, PFN_SHIFT, the geometry's
PFN width and entry size), so an i386 entry draws as the 32 bits it is. A clear P bit changes
how Linux reads the rest, and the labels follow: bit 8 is _PAGE_PROTNONE rather than G, and a
ptsim swap entry holds its swap slot where a present entry holds the PFN.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from matplotlib.patches import Rectangle

from ..hardware.arch import (
    ARCHES,
    PFN_SHIFT,
    _PAGE_ACCESSED,
    _PAGE_DIRTY,
    _PAGE_PCD,
    _PAGE_PRESENT,
    _PAGE_PROTNONE,
    _PAGE_PSE,
    _PAGE_PWT,
    _PAGE_RW,
    _PAGE_USER,
    Arch,
)
from ..kernel.core import MAPPED
from . import style

# The flags, low bit first, under the SDM's short names. arch.py has no _PAGE_GLOBAL: G's place
# is _PAGE_PROTNONE's, the same bit 8 (Linux: _PAGE_BIT_PROTNONE is _PAGE_BIT_GLOBAL). Bit 7 is
# PS in an upper entry and PAT in a 4 KiB page's entry; it is drawn as arch.py names it, PS.
_FLAGS = (("P", _PAGE_PRESENT), ("RW", _PAGE_RW), ("US", _PAGE_USER), ("PWT", _PAGE_PWT), ("PCD", _PAGE_PCD),
          ("A", _PAGE_ACCESSED), ("D", _PAGE_DIRTY), ("PS", _PAGE_PSE), ("G", _PAGE_PROTNONE))
# How wide a field is drawn, in units of a one-bit field: readable, not to scale.
_PFN_WIDTH, _FIELD_WIDTH = 3.0, 1.5


@dataclass(frozen=True)
class Field:
    name: str
    lo: int  # lowest and highest bit of the field
    hi: int
    value: int


def fields(entry: int, arch: Arch) -> list[Field]:
    """The fields of `entry`, highest bit first; together they cover every bit of the entry
    exactly once."""
    bits = 8 * arch.entry_bytes
    pfn_end = arch.pfn_mask.bit_length()  # one above the PFN's top bit
    present, protnone = entry & _PAGE_PRESENT, entry & _PAGE_PROTNONE
    spans, top = [], bits - 1
    if arch.entry_bytes == 8:  # NX is bit 63 of an 8-byte entry; a 4-byte entry has none
        spans.append(("NX", top, top))
        top -= 1
    spans.append(("avail", pfn_end, top))  # free for software; empty (dropped) on i386
    swap = entry != 0 and not entry & MAPPED  # ptsim's swap entry: the slot where the PFN goes
    spans += [("swap slot" if swap else "PFN", PFN_SHIFT, pfn_end - 1), ("avail", _PAGE_PROTNONE.bit_length(), PFN_SHIFT - 1)]
    for name, bit in reversed(_FLAGS):
        if bit == _PAGE_PROTNONE and protnone and not present:
            name = "PROTNONE"
        spans.append((name, bit.bit_length() - 1, bit.bit_length() - 1))
    return [Field(name, lo, hi, (entry >> lo) & ((1 << (hi - lo + 1)) - 1)) for name, lo, hi in spans if lo <= hi]


def _arch_of(arch) -> Arch:
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str) and arch in ARCHES:
        return ARCHES[arch]
    raise ValueError(f"arch must be a ptsim Arch or one of {sorted(ARCHES)}, not {arch!r}")


def pte_bits(entry, arch, *, ax=None, title=None):
    """Draw `entry` (an int, as `Kernel.follow_pte` or `Kernel.entry` returns it) of geometry
    `arch` (an Arch or its name) field by field, and return the Figure. A non-zero field is
    dark; under each field, its bit numbers."""
    arch = _arch_of(arch)
    bits = 8 * arch.entry_bytes
    if not isinstance(entry, Integral) or isinstance(entry, bool) or not 0 <= int(entry) < 1 << bits:
        raise ValueError(f"entry must be an int in [0, 2**{bits}) for {arch.name}'s {arch.entry_bytes}-byte entries, not {entry!r}")
    style.check_ax(ax)
    if title is not None and not isinstance(title, str):
        raise ValueError(f"title must be a str or None, not {type(title).__name__}")
    entry = int(entry)
    fig, ax = style.new_figure(ax, height=1.7)
    x = 0.0
    for f in fields(entry, arch):
        width = 1.0 if f.lo == f.hi else _PFN_WIDTH if f.lo == PFN_SHIFT else _FIELD_WIDTH
        width = max(width, 0.2 + 0.19 * len(f.name))  # room for a long name ("PROTNONE")
        fill, ink = (style.INK, "white") if f.value else ("white", style.INK)
        # Grey borders show against both fills, so two dark fields side by side stay two.
        ax.add_patch(Rectangle((x, 0), width, 1, facecolor=fill, edgecolor=style.GREY, linewidth=1.2))
        ax.text(x + width / 2, 0.68, f.name, ha="center", va="center", fontsize=10, weight="bold", color=ink)
        ax.text(x + width / 2, 0.3, str(f.value), ha="center", va="center", fontsize=10, color=ink)
        ax.text(x + width / 2, -0.22, str(f.lo) if f.lo == f.hi else f"{f.hi}–{f.lo}", ha="center", va="center", fontsize=style.TEXT, color=style.INK)
        x += width
    ax.add_patch(Rectangle((0, 0), x, 1, fill=False, edgecolor=style.INK, linewidth=1.2))
    ax.set_xlim(-0.05, x + 0.05)  # the frame's line is not clipped
    ax.set_ylim(-0.45, 1.05)
    ax.axis("off")
    if title is None:
        title = f"{arch.name} entry {entry:#x}: {bits} bits, bit numbers under each field"
    ax.set_title(title, fontsize=11)
    return fig
