"""``autodeeplab predict``: label PNGs in the dataset's palette and overlays, for a person to look at."""

from __future__ import annotations

import argparse
from pathlib import Path

from autodeeplab.cli.evaluate import inference_settings
from autodeeplab.data.scan import visible
from autodeeplab.errors import ConfigError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")  # as data.imageio


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="segment image files: label PNGs and overlays",
        description="Segment images with a trained model. For each IMAGE writes NAME_label.png (class "
        "indices, coloured with the dataset's palette) and NAME_overlay.png (the image blended with it).",
    )
    p.add_argument(
        "checkpoint", metavar="CHECKPOINT", help="model.pt of a training run (or the run directory)"
    )
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files, or folders of images")
    p.add_argument("--output", "-o", default="predictions", metavar="DIR", help="output folder")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S", help="image scales")
    p.add_argument(
        "--flip",
        action="store_true",
        help="also average the horizontally flipped image (volumes: all 8 mirrorings along the 3 axes)",
    )
    p.add_argument(
        "--largest-component",
        action="store_true",
        help="volumes: keep each class's largest connected piece only (nnU-Net's post-processing)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="weight of the colours in the overlay, 0..1 (default 0.5)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing output not written by autodeeplab"
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:i] (default: auto)")
    p.set_defaults(func=run)


def expand_images(paths: list[str]) -> list[Path]:
    """Files as given; a folder stands for its image files (sorted; hidden ones such as macOS's ``._x.jpg``
    are never data, as for the dataset readers). A missing path is an error."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and visible(Path(p.name))
            )
            if not inside:
                raise ConfigError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(inside)
        else:
            found.append(path)  # unreadable files are reported by predict_files before anything is written
    return found


def run(args: argparse.Namespace) -> int:
    from autodeeplab.infer.predict import predict_files
    from autodeeplab.nets.model_file import load_model
    from autodeeplab.runs.device import resolve_device

    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha: must be between 0 and 1, got {args.alpha}")
    from autodeeplab.infer.predict import output_names
    from autodeeplab.outputs import check_output_folder, refuse_reading_back

    device = resolve_device(args.device)
    model, info = load_model(args.checkpoint, device=device)
    if info.patch_size is not None:
        return run_volumes(args, model, info)
    if args.largest_component:
        raise ConfigError("--largest-component: a post-processing of volumes, not of images")
    settings = inference_settings(args)
    images = expand_images(args.images)
    output = Path(args.output)
    refuse_reading_back(output, "--output", input_folders(args.images))
    names = [f"{name}_{kind}.png" for name in output_names(images) for kind in ("label", "overlay")]
    check_output_folder(output, "--output", names, inputs=images, overwrite=args.overwrite)
    written = predict_files(model, images, output, info.palette, settings, args.alpha, device)
    for label, overlay in written:
        print(f"{label}  {overlay}")
    classes = ", ".join(info.class_names)
    print(f"{len(written)} images segmented into {output} ({info.num_classes} classes: {classes})")
    return 0


def expand_volumes(paths: list[str]) -> list[Path]:
    """NIfTI files as given; a folder stands for its ``.nii``/``.nii.gz`` files (sorted, hidden ones left
    out)."""
    from autodeeplab.data.nifti import nifti_stem

    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            volumes = (p for p in path.iterdir() if p.is_file() and nifti_stem(p) is not None)
            inside = sorted(p for p in volumes if visible(Path(p.name)))
            if not inside:
                raise ConfigError(f"{path}: folder holds no NIfTI volumes (.nii.gz, .nii)")
            found.extend(inside)
        elif nifti_stem(path) is None:
            raise ConfigError(f"{path}: not a NIfTI volume (.nii.gz or .nii); this model segments volumes")
        else:
            found.append(path)
    return found


def input_folders(inputs: list[str]) -> list[Path]:
    """The folders ``predict`` reads from: those given, and those of the files given (a later run on that
    folder would read the outputs back as images)."""
    return [Path(p) if Path(p).is_dir() else Path(p).parent for p in inputs if Path(p).exists()]


def run_volumes(args: argparse.Namespace, model, info) -> int:
    """``predict`` with a volumetric model: NAME_label.nii.gz and NAME_slices.png per input volume."""
    from autodeeplab.infer.predict_volumes import (
        LABEL_SUFFIX,
        SLICES_SUFFIX,
        predict_volume_files,
        volume_output_names,
    )
    from autodeeplab.outputs import check_output_folder, is_ours, refuse_reading_back

    if args.scales != [1.0]:
        raise ConfigError("--scales: multi-scale inference is for images, not volumes")
    volumes = expand_volumes(args.images)
    output = Path(args.output)
    refuse_reading_back(output, "--output", input_folders(args.images))
    names = [n + suffix for n in volume_output_names(volumes) for suffix in (LABEL_SUFFIX, SLICES_SUFFIX)]
    check_output_folder(output, "--output", names, inputs=volumes, overwrite=args.overwrite, ours=is_ours)
    spacing = info.dataset_options.get("target_spacing")
    written = predict_volume_files(
        model,
        volumes,
        output,
        info.palette,
        info.patch_size,
        0.5 if info.window_overlap is None else info.window_overlap,
        in_channels=model.config.in_channels,
        target_spacing=spacing,
        alpha=args.alpha,
        mirror=args.flip,  # volumes: the 8 mirrorings along every axis
        largest_component=args.largest_component,
    )
    for label, slices in written:
        print(f"{label}  {slices}")
    classes = ", ".join(info.class_names)
    print(f"{len(written)} volumes segmented into {output} ({info.num_classes} classes: {classes})")
    return 0
