"""The errors ptsim raises at its public face."""


class SegmentationFault(Exception):
    """An access the mappings do not allow (SIGSEGV). Nothing was changed."""

    def __init__(self, address: int, reason: str):
        super().__init__(f"segmentation fault at {address:#x}: {reason}")
        self.address = address
        self.reason = reason


class OutOfMemory(Exception):
    """Frames ran out. The operation was undone: the machine is as it was before the call."""


class InvariantError(AssertionError):
    """The checker found the machine in a state the kernel must never reach."""


class ProcessExited(RuntimeError):
    """A call on a process that has exited."""
