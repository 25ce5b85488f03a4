"""ptsim: x86 page tables, a Linux-style kernel, and Phillips' 2002 shared-page-table fork."""

from .errors import InvariantError, OutOfMemory, ProcessExited, SegmentationFault
from .hardware import ARCHES
from .kernel import POLICIES
from .machine import Machine, Process

__all__ = ["ARCHES", "InvariantError", "Machine", "OutOfMemory", "POLICIES", "Process", "ProcessExited", "SegmentationFault"]
