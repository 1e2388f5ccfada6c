"""Triton kernels for attention, FlashBias and Lightning Attention-2."""
