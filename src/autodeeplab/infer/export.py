"""ONNX export of a segmentation model and a parity check in onnxruntime.

The graph is exported with PyTorch's ``torch.export``-based ONNX exporter (``dynamo=True``, torch >= 2.5)
for one fixed input shape ``[N, C, H, W]``: the found network computes the size of every level from the
input size, so the resize targets become constants of the graph. Older torch (the package allows
``torch>=2.3``) has no ``dynamo`` argument; there the TorchScript-based exporter is used, which gives the
same parity (a test exports with both). Export again for another input size. The model is
exported in eval mode (BN running statistics, no drop path, no dropout); its mode is restored after.

The graph has one input ``image`` (``[N, C, H, W]`` float32) and one output ``logits``
(``[N, num_classes, H, W]``). The file is written atomically.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from autodeeplab.errors import AutoDeepLabError
from autodeeplab.fileio import atomic_write_bytes

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
TORCHSCRIPT_OPSET = 17
"""Opset for the TorchScript-based exporter when none is asked for (bilinear Resize with every
coordinate mode; supported by every onnxruntime the ``onnx`` extra allows)."""
DYNAMO_MIN_TORCH = "2.5"
"""First torch release whose ``torch.onnx.export`` takes ``dynamo=True``."""

Exporter = Literal["auto", "dynamo", "torchscript"]


class ExportError(AutoDeepLabError):
    """Export failed for a reason the user can fix (missing extra, unwritable or unreadable file)."""


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's narration (stdout), warnings, and its log about optional torchvision ops."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ExportError(
            f"ONNX support needs the {module!r} package: pip install 'autodeeplab[onnx]'"
        ) from None


def dynamo_exporter_available() -> bool:
    """Whether this torch's ``torch.onnx.export`` accepts ``dynamo=True`` (torch >= 2.5)."""
    try:
        return "dynamo" in inspect.signature(torch.onnx.export).parameters
    except (TypeError, ValueError):  # a signature that cannot be inspected: assume the old exporter
        return False


def _onnx_bytes(model: nn.Module, example: torch.Tensor, opset_version: int | None, dynamo: bool) -> bytes:
    """The serialised ONNX model of ``model`` traced on ``example`` ``[N, C, H, W]`` (eval mode, quiet)."""
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "verbose": False}
    with _eval_mode(model), _quiet_exporter():
        if dynamo:
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset_version, **names)
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        # dynamo=False is passed only where the argument exists (it is the default before torch 2.9).
        extra = {"dynamo": False} if dynamo_exporter_available() else {}
        torch.onnx.export(
            model, (example,), buffer, opset_version=opset_version or TORCHSCRIPT_OPSET, **names, **extra
        )
        return buffer.getvalue()


_MARK = ("written_by", "autodeeplab")
"""The metadata entry that tells a later export that the file is its own to replace."""


def _mark_ours(data: bytes) -> bytes:
    """The ONNX model ``data`` with :data:`_MARK` among its metadata."""
    import onnx

    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = _MARK
    return proto.SerializeToString()


def is_our_onnx(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ONNX file that :func:`export_onnx` wrote (False when unreadable or when
    the ``onnx`` package is missing)."""
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises its own errors (DecodeError, ...) for files that are not ONNX
        return False
    return any((p.key, p.value) == _MARK for p in proto.metadata_props)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: Sequence[int],
    opset_version: int | None = None,
    exporter: Exporter = "auto",
) -> Path:
    """Export ``model`` for inputs of ``input_shape`` (``[N, C, H, W]``) to the ONNX file ``path``.

    Returns the path written. ``opset_version`` ``None`` lets the exporter pick its default.
    ``exporter``: ``"dynamo"`` (``torch.export``-based, torch >= 2.5), ``"torchscript"`` (the older
    tracer), or ``"auto"``: dynamo where this torch has it, else TorchScript.
    """
    _require("onnx")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise ExportError(f"exporter: expected auto, dynamo or torchscript, got {exporter!r}")
    has_dynamo = dynamo_exporter_available()
    if exporter == "dynamo" and not has_dynamo:
        raise ExportError(
            f"exporter 'dynamo' needs torch>={DYNAMO_MIN_TORCH} (installed: {torch.__version__}); "
            "use exporter 'torchscript' or upgrade torch"
        )
    dynamo = exporter == "dynamo" or (exporter == "auto" and has_dynamo)
    if dynamo:
        _require("onnxscript")
    path = Path(path)
    if len(input_shape) != 4 or not all(isinstance(s, int) and s > 0 for s in input_shape):
        raise ExportError(
            f"input shape: expected four positive integers [N, C, H, W], got {list(input_shape)}"
        )
    if path.is_dir():
        raise ExportError(f"{path}: is a directory, not an ONNX file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise ExportError(f"{path}: parent {path.parent} is not a directory")
    device = next(model.parameters()).device
    example = torch.zeros(tuple(input_shape), device=device)
    data = _mark_ours(_onnx_bytes(model, example, opset_version, dynamo))
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write ONNX file ({exc.strerror or exc})") from None
    return path


def run_onnx(path: str | os.PathLike[str], x: np.ndarray) -> np.ndarray:
    """Run the ONNX model at ``path`` on ``x`` (``[N, C, H, W]`` float32) in onnxruntime on the CPU."""
    _require("onnxruntime")
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such ONNX file")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for broken files
        raise ExportError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
    (output,) = session.run([OUTPUT_NAME], {session.get_inputs()[0].name: x.astype(np.float32)})
    return output


def onnx_parity(model: nn.Module, path: str | os.PathLike[str], x: torch.Tensor) -> float:
    """Max absolute difference between ``model(x)`` (eval mode) and the ONNX file at ``path`` on ``x``.

    ``x`` is ``[N, C, H, W]`` with the shape the file was exported for.
    """
    with _eval_mode(model), torch.no_grad():
        expected = model(x).float().cpu().numpy()
    actual = run_onnx(path, x.detach().float().cpu().numpy())
    if actual.shape != expected.shape:
        raise ExportError(f"{path}: ONNX output shape {list(actual.shape)} != PyTorch {list(expected.shape)}")
    return float(np.abs(actual - expected).max())
