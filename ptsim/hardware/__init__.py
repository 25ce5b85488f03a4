"""The hardware: paging geometries, physical memory, the MMU and its TLB. Knows nothing of processes."""

from .arch import ARCHES, Arch
from .memory import PhysicalMemory
from .mmu import MMU, TLB, PageFault, TLBEntry

__all__ = ["ARCHES", "Arch", "MMU", "PageFault", "PhysicalMemory", "TLB", "TLBEntry"]
