"""Auto-DeepLab: hierarchical neural architecture search for semantic segmentation (Liu et al., CVPR 2019)."""

__version__ = "0.1.0"
