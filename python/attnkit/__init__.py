"""attnkit: softmax attention (FlashAttention-4 style), FlashBias and Lightning Attention-2 as PyTorch custom
ops with autograd: CuTe-DSL kernels for Hopper and Blackwell, Triton on other CUDA GPUs, a PyTorch reference
on the CPU."""

from . import bias, lightning
from .api import attention, lightning_attention, lightning_attention_step
from .bias import LowRankBias
from .dispatch import BackendUnavailableError

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "LowRankBias",
    "attention",
    "bias",
    "lightning",
    "lightning_attention",
    "lightning_attention_step",
]
