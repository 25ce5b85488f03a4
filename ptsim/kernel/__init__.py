"""A Linux-style kernel that drives the simulated hardware: mm, VMAs, faults, fork policies."""

from .core import Kernel, Task
from .fork import POLICIES, CopyPolicy, SharedPolicy
from .trace import COUNTERS, Event

__all__ = ["COUNTERS", "CopyPolicy", "Event", "Kernel", "POLICIES", "SharedPolicy", "Task"]
