"""Readers of the host kernel's /proc files.

/proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst) holds one 64-bit little-endian
entry per virtual page, at offset vpn * 8:

    # | present | swapped | file/shared | . . . | exclusive | soft-dirty | PFN (bits 0-54) |
    #    63        62        61                    56          55

The PFN field reads as 0 unless the reader has CAP_SYS_ADMIN (Linux 4.2 and later), so a
present page with PFN 0 means "PFNs hidden", never frame 0.
"""

from __future__ import annotations

import struct

PAGEMAP_ENTRY_BYTES = 8
PM_PFN_MASK = (1 << 55) - 1
PM_PRESENT = 1 << 63


def read_kb_fields(path: str) -> dict[str, int]:
    """The kB lines of a /proc file (status, smaps_rollup, meminfo), as ints in kB."""
    fields = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            words = value.split()
            if len(words) == 2 and words[1] == "kB":
                fields[key] = int(words[0])
    return fields


def read_status(pid: int | str = "self") -> dict[str, int]:
    """The kB lines of /proc/PID/status (VmRSS, VmPTE, VmSwap, ...), as ints in kB."""
    return read_kb_fields(f"/proc/{pid}/status")


def read_region_rss(start: int, end: int, pid: int | str = "self") -> int:
    """kB resident in the VMAs that lie in [start, end): the sum of their Rss lines in
    /proc/PID/smaps, which counts what VmRSS counts (anonymous and shmem pages, never the
    zero page), for those VMAs alone."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):  # a VMA's header: "lo-hi perms ..."
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = start <= lo and hi <= end
            elif inside and head == "Rss:":
                total += int(line.split()[1])
    return total


def read_pagemap(vpn: int, npages: int, pid: int | str = "self") -> bytes:
    """The raw pagemap entries of pages [vpn, vpn + npages), 8 bytes each.

    Raw bytes, so that a process can read its own entries without making a Python object per
    page (its own memory is what is being watched); `pagemap_frames` decodes them.
    """
    if not isinstance(vpn, int) or vpn < 0:
        raise ValueError(f"vpn must be a non-negative int, not {vpn!r}")
    if not isinstance(npages, int) or npages < 0:
        raise ValueError(f"npages must be a non-negative int, not {npages!r}")
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as f:
        f.seek(vpn * PAGEMAP_ENTRY_BYTES)
        raw = f.read(npages * PAGEMAP_ENTRY_BYTES)
    if len(raw) != npages * PAGEMAP_ENTRY_BYTES:
        raise OSError(f"/proc/{pid}/pagemap: read {len(raw)} bytes of {npages * PAGEMAP_ENTRY_BYTES}")
    return raw


def pagemap_frames(raw: bytes, vpn: int) -> dict[int, int]:
    """vpn -> PFN for every present page in raw entries that start at page `vpn`.

    The PFN is 0 for every page when PFNs are hidden from the reader.
    """
    if len(raw) % PAGEMAP_ENTRY_BYTES:
        raise ValueError(f"raw: {len(raw)} bytes is not a whole number of {PAGEMAP_ENTRY_BYTES}-byte entries")
    return {vpn + i: entry & PM_PFN_MASK for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)) if entry & PM_PRESENT}
