"""Evaluation (single/multi-scale, flip, sliding window), metrics, predictions and ONNX export."""
