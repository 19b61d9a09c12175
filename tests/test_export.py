"""ONNX export: logits in onnxruntime equal PyTorch's (max abs difference < 1e-4), clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx", reason="the onnx extra is not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
import onnx  # noqa: E402

from autodeeplab.infer.export import (  # noqa: E402
    DYNAMO_MIN_TORCH,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    dynamo_exporter_available,
    export_onnx,
    onnx_parity,
    run_onnx,
)
from autodeeplab.nets.network import AutoDeepLabNet, NetworkConfig  # noqa: E402
from autodeeplab.ops.primitives import AtrousConv  # noqa: E402
from autodeeplab.space.autodeeplab.genotype import Genotype  # noqa: E402

PARITY_TOLERANCE = 1e-4
SHAPE = (1, 3, 65, 97)  # odd sizes, so resizes are not plain ×2

# Every primitive (pools, skips strided and not, separable and atrous convs), a path that starts with a
# stride from the stem and goes both up and down: more of the graph than the paper's genotype.
GENOTYPE = Genotype(
    network_path=(1, 0, 0, 1, 2, 3, 2, 1),
    cell=(
        (("max_pool_3x3", 0), ("skip_connect", 1)),
        (("avg_pool_3x3", 1), ("atr_conv_3x3", 2)),
        (("sep_conv_5x5", 3), ("skip_connect", 0)),
        (("atr_conv_5x5", 1), ("sep_conv_3x3", 4)),
        (("skip_connect", 5), ("avg_pool_3x3", 2)),
    ),
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[AutoDeepLabNet, Path]:
    """One export (the slow part, ~10 s); the genotype above covers the paper's ops and moves and more."""
    torch.manual_seed(0)
    config = NetworkConfig(filter_multiplier=4, num_classes=5, aspp_channels=16, decoder_channels=16)
    net = AutoDeepLabNet(GENOTYPE, config).train()
    # Move the BN running statistics part of the way towards real activation statistics (default
    # momentum, three batches), so that the logits are far from zero and the comparison means
    # something. Not all the way: a randomly initialised deep BN network with fully calibrated
    # statistics is chaotic (measured: a 1e-6 change of the input moves the paper network's logits by
    # ~6e-4 in PyTorch alone, and batch 1 vs batch 2 by ~1.5e-4), a float32 noise floor that no
    # exporter could beat; trained networks are not like that.
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, *SHAPE[1:]))
    net.eval()
    # The graph holds the released strided atrous op (resize with aligned corners, then a plain conv).
    assert any(isinstance(m, AtrousConv) and m.stride == 2 for m in net.modules())
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert export_onnx(net, path, SHAPE) == path
    return net, path


def test_onnxruntime_matches_pytorch(exported: tuple[AutoDeepLabNet, Path]) -> None:
    net, path = exported
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = net(x)
    scale = logits.abs().max().item()
    assert scale > 1e-2  # a meaningful comparison, not two near-zero tensors
    diff = onnx_parity(net, path, x)
    assert diff < PARITY_TOLERANCE
    assert diff < 1e-5 * scale  # and far below any real discrepancy (a wrong resize or padding)
    np.testing.assert_allclose(run_onnx(path, x.numpy()), logits.numpy(), atol=PARITY_TOLERANCE, rtol=0)


def test_graph_interface(exported: tuple[AutoDeepLabNet, Path]) -> None:
    net, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == [INPUT_NAME]
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME]
    dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 5, SHAPE[2], SHAPE[3]]
    assert not net.training  # export left the mode as it found it


def test_the_file_is_marked_as_ours(exported: tuple[AutoDeepLabNet, Path], tmp_path: Path) -> None:
    """A later export may replace its own file (the metadata mark) but not another ONNX file or junk."""
    from autodeeplab.infer.export import is_our_onnx

    _, path = exported
    assert is_our_onnx(path)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    assert not is_our_onnx(foreign) and not is_our_onnx(tmp_path / "junk.onnx")
    assert not is_our_onnx(tmp_path / "missing.onnx")


def _old_torch_export(calls: list[dict]):
    """``torch.onnx.export`` as torch < 2.5 has it: no ``dynamo`` argument (passing one is a TypeError)."""
    real = torch.onnx.export

    def export(model, args, f, input_names=None, output_names=None, opset_version=None, verbose=False):
        calls.append({"opset_version": opset_version})
        return real(
            model,
            args,
            f,
            input_names=input_names,
            output_names=output_names,
            opset_version=opset_version,
            verbose=verbose,
            dynamo=False,
        )

    return export


def test_torch_without_the_dynamo_exporter_falls_back_with_parity(
    exported: tuple[AutoDeepLabNet, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net, _ = exported
    assert dynamo_exporter_available()  # this torch (the pin) has it
    calls: list[dict] = []
    monkeypatch.setattr(torch.onnx, "export", _old_torch_export(calls))
    assert not dynamo_exporter_available()
    path = export_onnx(net, tmp_path / "old.onnx", SHAPE)
    assert calls == [{"opset_version": 17}]
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))
    assert onnx_parity(net, path, x) < PARITY_TOLERANCE
    with pytest.raises(
        ExportError, match=rf"exporter 'dynamo' needs torch>={DYNAMO_MIN_TORCH} \(installed: "
    ):
        export_onnx(net, tmp_path / "new.onnx", SHAPE, exporter="dynamo")
    assert not (tmp_path / "new.onnx").exists()


def test_export_restores_training_mode(tmp_path: Path) -> None:
    """Exported in eval mode: drop path and dropout would make the graph random."""
    net = AutoDeepLabNet(
        Genotype(network_path=(0, 1), cell=((("sep_conv_3x3", 0), ("skip_connect", 1)),)),
        NetworkConfig(
            filter_multiplier=2, num_classes=2, aspp_channels=4, decoder_channels=4, drop_path_keep_prob=0.5
        ),
    ).train()
    net.set_drop_path_progress(1.0)
    path = export_onnx(net, tmp_path / "small.onnx", (1, 3, 33, 33))
    assert net.training
    x = torch.randn(1, 3, 33, 33)
    assert onnx_parity(net, path, x) < PARITY_TOLERANCE  # deterministic, so it equals eval-mode PyTorch
    assert net.training


def test_errors_name_the_file(tmp_path: Path) -> None:
    net = nn.Conv2d(3, 1, 1)
    with pytest.raises(ExportError, match=f"{tmp_path}: is a directory, not an ONNX file name"):
        export_onnx(net, tmp_path, (1, 3, 8, 8))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="parent .* is not a directory"):
        export_onnx(net, blocker / "model.onnx", (1, 3, 8, 8))
    with pytest.raises(ExportError, match=r"input shape: expected four positive integers \[N, C, H, W\]"):
        export_onnx(net, tmp_path / "m.onnx", (3, 8, 8))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf")
    with pytest.raises(ExportError, match=f"{broken}: not a loadable ONNX model"):
        run_onnx(broken, np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ExportError, match="no such ONNX file"):
        run_onnx(tmp_path / "missing.onnx", np.zeros((1, 3, 8, 8), np.float32))
