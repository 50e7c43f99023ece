"""ablation: skip-connection ablation studies for U-Net and UCTransNet (Wang et al., AAAI 2022)."""

__version__ = "0.1.0"
