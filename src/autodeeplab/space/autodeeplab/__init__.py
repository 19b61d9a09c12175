"""Auto-DeepLab's space, the reference evaluation readable next to the paper: trellis, cell, supernet
(Eq. 6), genotype, decoding, random architectures."""
