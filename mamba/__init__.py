"""mamba: selective scan, Mamba block, MambaForecaster and its LightningModule.

Imports torch only; `LitMambaForecaster` (which needs pytorch_lightning) is
loaded on first access, so inference code does not pay for Lightning.
"""

from mamba.conv import causal_conv1d, causal_conv1d_ref
from mamba.model import MambaBlock, MambaForecaster, ResidualBlock, RMSNorm
from mamba.scan import selective_scan, selective_scan_ref

__all__ = [
    "LitMambaForecaster",
    "MambaBlock",
    "MambaForecaster",
    "RMSNorm",
    "ResidualBlock",
    "causal_conv1d",
    "causal_conv1d_ref",
    "selective_scan",
    "selective_scan_ref",
]


def __getattr__(name):
    if name == "LitMambaForecaster":
        from mamba.lit import LitMambaForecaster

        return LitMambaForecaster
    raise AttributeError(f"module 'mamba' has no attribute {name!r}")
