"""Datasets for segmentation: readers for the usual layouts, the synthetic default, transforms and checks.

``registry.build_dataset(name, root, split, transform)`` returns a :class:`SegmentationDataset` whose items
are
``(image float32 [3, H, W] normalised, mask int64 [H, W])``, mask values in ``0..num_classes-1`` or 255
(ignore). This package knows nothing of models.
"""
