"""COARSE3D: class-prototype contrastive learning for weakly-supervised range-image segmentation."""

__version__ = "0.1.0"
