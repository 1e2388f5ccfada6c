"""Attention kernels: an arch-independent base class and one subclass per (direction, arch)."""
