"""The CLI end to end on the built-in synthetic data: search, decode, the whole pipeline, and bad input."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import SUPERNET, SYNTHETIC_SEARCH_DATA

from autodeeplab.checkpoint_io import load_checkpoint
from autodeeplab.cli.main import main
from autodeeplab.config.settings import load_config
from autodeeplab.data.registry import build_dataset
from autodeeplab.data.synthetic import CLASS_NAMES, PALETTE
from autodeeplab.data.transforms import EvalTransform
from autodeeplab.runs.rundir import read_jsonl
from autodeeplab.search.config import SearchConfig
from autodeeplab.search.spaces import build_autodeeplab_space
from autodeeplab.space.autodeeplab.decode import decode, load_arch_params
from autodeeplab.space.autodeeplab.genotype import Genotype

TINY_SEARCH = [
    *SUPERNET,
    *SYNTHETIC_SEARCH_DATA,
    "batch_size=2",
    "epochs=2",
    "arch_start_epoch=1",
    "device=cpu",
]


def sets(flag, items):
    return [part for item in items for part in (flag, item)]


def miou_by_hand(predictions, truths, num_classes, ignore_index):
    """Mean IoU over the classes present in the truth or the predictions (the documented definition), from
    one confusion matrix over all images; ``ignore_index`` pixels do not count."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for pred, truth in zip(predictions, truths, strict=True):
        keep = truth != ignore_index
        np.add.at(confusion, (truth[keep], pred[keep]), 1)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_search_cli_end_to_end(tmp_path, capsys):
    """`autodeeplab search` on synthetic data, 2 epochs (the first a warm-up without architecture steps),
    and every file it writes checked against an independent recomputation:

    - metrics.jsonl: one line per epoch; `arch_loss` only once architecture steps run; the cosine learning
      rate; each epoch's val mIoU equals the mIoU recomputed by hand (own confusion matrix) from that
      epoch's checkpoint weights, in eval mode, on the configured validation split;
    - arch_params.json holds the softmax α and masked-softmax β of the last checkpoint; genotype.json is
      decode() of it and of the model; the genotype's short form is the one in metrics.jsonl;
    - arch_history.jsonl: the warm-up epoch leaves α and β at their seeded initial values, the
      architecture epoch moves both.
    """
    run = tmp_path / "run"
    assert main(["search", "--quiet", "-o", str(run), *sets("--set", TINY_SEARCH)]) == 0
    out = capsys.readouterr().out
    assert "found architecture" in out and "block 1:" in out and "output stride" in out
    for name in ("config.yaml", "split.json", "arch_params.json", "genotype.json", "metrics.jsonl"):
        assert (run / name).is_file()
    assert sorted(p.name for p in (run / "plots").glob("*.png")) == [
        "arch_history.png",
        "cell.png",
        "curves.png",
        "network_path.png",
    ]
    config = load_config(SearchConfig, yaml_path=run / "config.yaml")
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2] == list(range(1, config.epochs + 1))
    assert "arch_loss" not in metrics[0] and metrics[1]["arch_loss"] > 0  # arch_start_epoch=1
    for m in metrics:  # the rate the epoch trained with: cosine from lr at epoch 1 (not the next epoch's)
        cosine = (1 + math.cos(math.pi * (m["epoch"] - 1) / config.epochs)) / 2
        assert m["lr"] == pytest.approx(config.lr_min + (config.lr - config.lr_min) * cosine)

    # each epoch's val mIoU, recomputed from the checkpoint written at the end of that epoch
    d = config.data
    options = {"seed": config.seed, "num_samples": d.synthetic_val_samples, "size": d.synthetic_size}
    val = build_dataset(d.dataset, d.root, d.val_split, transform=EvalTransform(), **options)
    assert len(val) == 2
    checkpoints = {}
    for path in sorted((run / "checkpoints").glob("*.pt")):
        state = load_checkpoint(path)
        checkpoints[state["position"]["epoch"]] = state
    assert sorted(checkpoints) == [1, 2]
    models = {}
    for epoch, state in checkpoints.items():
        model = build_autodeeplab_space(config, state["num_classes"])
        model.load_state_dict(state["model"])
        model.eval()
        with torch.no_grad():
            predictions = [model(image[None])[0].argmax(0).numpy() for image, _ in val]
        truths = [mask.numpy() for _, mask in val]
        miou = miou_by_hand(predictions, truths, val.num_classes, val.ignore_index)
        assert metrics[epoch - 1]["val_miou"] == pytest.approx(miou, rel=1e-12, abs=1e-12)
        models[epoch] = model

    # the architecture files: the last model's α/β, their decoding, and the genotype in the metrics
    alpha, beta, blocks = load_arch_params(run / "arch_params.json")
    final = models[2]
    with torch.no_grad():
        np.testing.assert_allclose(alpha, final.alpha_weights().numpy(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(beta, final.beta_weights().numpy(), rtol=0, atol=1e-8)
    genotype = Genotype.load(run / "genotype.json")
    assert genotype == decode(alpha, beta, blocks) == final.decode()
    assert metrics[1]["genotype"] == genotype.short()
    history = read_jsonl(run / "arch_history.jsonl")
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["alpha"] == json.loads((run / "arch_params.json").read_text())["alpha"]
    torch.manual_seed(config.seed)  # the search seeds torch just before it builds the supernet
    initial = build_autodeeplab_space(config, checkpoints[1]["num_classes"])
    with torch.no_grad():
        np.testing.assert_allclose(history[0]["alpha"], initial.alpha_weights().numpy(), rtol=0, atol=1e-8)
        np.testing.assert_allclose(history[0]["beta"], initial.beta_weights().numpy(), rtol=0, atol=1e-8)
    for key in ("alpha", "beta"):
        assert np.abs(np.array(history[1][key]) - np.array(history[0][key])).max() > 1e-5, key
    assert metrics[0]["genotype"] == decode(history[0]["alpha"], history[0]["beta"], blocks).short()

    # decode the written arch_params again with the CLI: same genotype as the search wrote
    decoded = tmp_path / "decoded.json"
    assert main(["decode", str(run / "arch_params.json"), "-o", str(decoded)]) == 0
    assert json.loads(decoded.read_text()) == json.loads((run / "genotype.json").read_text())


def test_pipeline_cli_end_to_end(tmp_path, capsys):
    """`autodeeplab run`: search → train → evaluate → predict. The trained network is the found one;
    eval.json's mIoU, pixel accuracy and per-class IoU are those of its own confusion matrix, which counts
    every pixel of the evaluated images; the prediction files are palette PNGs of class indices."""
    out = tmp_path / "pipe"
    args = ["run", "--quiet", "-o", str(out), *sets("--search-set", TINY_SEARCH)]
    args += sets("--train-set", ["iterations=4", "model.filter_multiplier=2", "data.crop_size=32",
                                 "data.synthetic_size=[32,32]", "data.synthetic_train_samples=8",
                                 "data.synthetic_eval_samples=2", "eval_every=0"])  # fmt: skip
    assert main(args) == 0
    assert "test mIoU" in capsys.readouterr().out
    assert (out / "search" / "genotype.json").is_file() and (out / "train" / "model.pt").is_file()
    # the network trained is the one the search found
    assert Genotype.load(out / "train" / "genotype.json") == Genotype.load(out / "search" / "genotype.json")
    result = json.loads((out / "eval.json").read_text())
    assert result["split"] == "test" and result["class_names"] == list(CLASS_NAMES)
    # the reported figures are those of the confusion matrix it reports, over every pixel of the images
    confusion = np.array(result["confusion"])
    tp, union = np.diag(confusion), confusion.sum(axis=0) + confusion.sum(axis=1) - np.diag(confusion)
    assert confusion.sum() == result["num_pixels"] == result["num_images"] * 32 * 32 > 0
    assert result["miou"] == pytest.approx(np.mean(tp[union > 0] / union[union > 0]), rel=1e-12)
    assert result["pixel_accuracy"] == pytest.approx(tp.sum() / confusion.sum(), rel=1e-12)
    for c, name in enumerate(CLASS_NAMES):
        assert result["per_class_iou"][name] == (
            pytest.approx(tp[c] / union[c], rel=1e-12) if union[c] else None
        )
    names = sorted(p.name for p in (out / "predictions").iterdir())
    assert names == [f"sample{i:03d}_{kind}.png" for i in range(4) for kind in ("label", "overlay", "panel")]
    for i in range(4):
        with Image.open(out / "predictions" / f"sample{i:03d}_label.png") as label:
            assert label.mode == "P" and label.size == (32, 32)  # the synthetic images, 32x32
            assert label.getpalette()[:3] == list(PALETTE[0])  # the dataset's colours
            assert np.asarray(label).max() < len(CLASS_NAMES)  # class indices, nothing else


@pytest.mark.parametrize(
    "argv,message",
    [
        (["search", "--set", "epochs=-1"], "epochs: must be at least 1"),
        (["search", "--set", "serch.lr=1"], "unknown key 'serch.lr'"),
        (["search", "--preset", "nope"], "invalid choice: 'nope'"),
        (["search", "--dataset", "camvid", "--data-root", "/nonexistent"], "/nonexistent"),
        (["search", "--resume", "/nonexistent/run"], "not a search run directory"),
        (["decode", "/nonexistent/arch.json"], "no such arch_params file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_output_directory_of_someone_else_is_not_touched(tmp_path, capsys):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert main(["search", "-o", str(precious), *sets("--set", TINY_SEARCH)]) == 2
    assert sorted(p.name for p in precious.iterdir()) == ["notes.txt"]
    assert "not empty" in capsys.readouterr().err
