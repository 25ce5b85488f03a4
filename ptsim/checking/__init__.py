"""Checking the kernel: the invariant checker and the independent oracle model."""
