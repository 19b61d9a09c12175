"""Where a command may write: the one rule every command that writes follows.

- An output is never one of the command's inputs, not even with ``--overwrite`` (``export RUN/model.pt
  -o RUN/model.pt`` would replace the trained model by the file made from it).
- An output path that exists and is not recognisably ours is refused in one line unless the user gives
  ``--overwrite``. What is ours: PNGs carry a text chunk ``Software: autodeeplab`` (:func:`png_bytes`,
  the plots' ``save_png``); other kinds pass their own test (e.g. an eval JSON's marker).
- A folder of outputs that would be read back as inputs (``predict DIR -o DIR``) is refused.

The checks run before any work, so a refusal changes nothing on disk.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from autodeeplab.errors import ConfigError

SOFTWARE = "autodeeplab"
"""Value of the PNG text chunk ``Software`` in every PNG this package writes."""

OVERWRITE_HINT = "give another path, or --overwrite to replace it"


def png_bytes(image: Any) -> bytes:
    """PNG bytes of a PIL image, marked as ours (``Software: autodeeplab``) so a later run may replace it."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", SOFTWARE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def is_our_png(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a PNG this package wrote (its ``Software`` text chunk says so)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.format == "PNG" and str(im.info.get("Software", "")).startswith(SOFTWARE)
    except Exception:  # anything PIL cannot read is not ours
        return False


NIFTI_DESCRIPTION = "autodeeplab prediction"
"""The ``descrip`` field of every NIfTI file this package writes."""
_DESCRIP_OFFSET = {348: 148, 540: 240}  # NIfTI-1 and NIfTI-2 headers, by their ``sizeof_hdr``


def is_our_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a NIfTI file this package wrote (its header's ``descrip`` says so). Reads the
    header bytes only (gzip-compressed or not), without nibabel."""
    import gzip
    import struct

    try:
        with open(path, "rb") as raw:
            start = raw.read(2)
        opener = gzip.open if start == b"\x1f\x8b" else open
        with opener(path, "rb") as stream:
            header = stream.read(560)
    except (OSError, EOFError):
        return False
    if len(header) < 4:
        return False
    for order in "<>":
        offset = _DESCRIP_OFFSET.get(struct.unpack(f"{order}i", header[:4])[0])
        if offset is not None:
            text = header[offset : offset + 80].split(b"\0", 1)[0]
            return text == NIFTI_DESCRIPTION.encode()
    return False


def is_ours(path: Path) -> bool:
    """A PNG or NIfTI file this package wrote."""
    return is_our_png(path) or is_our_nifti(path)


def same_place(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file or folder (through symlinks, ``..`` and hard links)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _refuse_a_file_in_the_way(path: Path, flag: str) -> None:
    """A file where one of ``path``'s folders should be: nothing can be written there."""
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"{flag}: {blocking} is a file, not a folder, so {path} cannot be written")


def check_output_file(
    path: str | os.PathLike[str],
    flag: str,
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    ours: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse ``path`` as an output file of a command (one-line :class:`ConfigError` naming ``flag``) when
    it is one of ``inputs``, a folder, under a file, or an existing file that ``ours`` does not recognise
    and ``overwrite`` does not allow. Returns ``path`` as a :class:`~pathlib.Path`."""
    path = Path(path)
    for source in inputs:
        if same_place(path, source):
            raise ConfigError(f"{flag}: {path} is one of this command's inputs; write the result elsewhere")
    if path.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; give a file name")
    _refuse_a_file_in_the_way(path, flag)
    if (path.exists() or path.is_symlink()) and not overwrite and not (ours is not None and ours(path)):
        raise ConfigError(f"{flag}: {path} exists and was not written by autodeeplab; {OVERWRITE_HINT}")
    return path


def check_writable(path: str | os.PathLike[str], flag: str) -> None:
    """Refuse, before any work, a file ``path`` that could not be written at the end: one under a file, or
    in a folder where no file can be made (tried with a temporary file, removed at once; the folders
    missing are not made)."""
    path = Path(path)
    _refuse_a_file_in_the_way(path, flag)
    folder = next((p for p in path.parents if p.exists()), Path("."))
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"{flag}: cannot write {path}: no file can be made in {folder} ({exc.strerror})"
        ) from None


def refuse_other_content(path: str | os.PathLike[str], flag: str, text: str, overwrite: bool = False) -> None:
    """Refuse to write ``text`` to ``path`` when a file there holds something else and ``overwrite`` does not
    allow it (one-line :class:`ConfigError` naming ``flag``). For files that carry no mark of who wrote them
    (a genotype JSON): rewriting the same content is harmless (a rerun), anything else may be the user's."""
    path = Path(path)
    if overwrite or not (path.exists() or path.is_symlink()):
        return
    try:
        same = path.is_file() and path.read_bytes() == text.encode("utf-8")
    except OSError:
        same = False
    if not same:
        raise ConfigError(f"{flag}: {path} exists and holds something else; {OVERWRITE_HINT}")


def check_output_folder(
    folder: str | os.PathLike[str],
    flag: str,
    names: Iterable[str],
    *,
    inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    ours: Callable[[Path], bool] = is_our_png,
) -> Path:
    """Refuse ``folder`` as the place for the files ``names`` when it is a file, when one of the files would
    replace an input, or when one exists that ``ours`` does not recognise (unless ``overwrite``).
    Returns ``folder`` as a :class:`~pathlib.Path`."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag}: {folder} exists and is not a folder")
    blocking = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"{flag}: {blocking} is a file, not a folder, so {folder} cannot be made")
    sources = list(inputs)
    for name in names:
        check_output_file(folder / name, flag, inputs=sources, overwrite=overwrite, ours=ours)
    return folder


def refuse_reading_back(folder: str | os.PathLike[str], flag: str, input_folders: Iterable[Path]) -> None:
    """Refuse writing into a folder that is itself read as input (outputs would be read back later)."""
    for source in input_folders:
        if same_place(folder, source):
            raise ConfigError(
                f"{flag}: {folder} holds this command's inputs; outputs there would be read back as inputs "
                "next time; give another folder"
            )
