"""Pure-PyTorch references: the judges. Fast backends never import this package."""

from .attention import attention_backward, attention_forward, visible_mask
from .lightning import lightning_backward, lightning_chunked, lightning_forward, lightning_recurrent

__all__ = [
    "attention_backward",
    "attention_forward",
    "lightning_backward",
    "lightning_chunked",
    "lightning_forward",
    "lightning_recurrent",
    "visible_mask",
]
