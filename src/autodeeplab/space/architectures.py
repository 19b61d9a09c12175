"""Any search space's architecture from a name, a file or a run directory: what ``train --arch``, ``show`` and
``info`` accept. Each space has one architecture type and one file name
(:attr:`Genotype.FILE_NAME` ``genotype.json``, :attr:`DintsArch.FILE_NAME` ``dints_arch.json``); a file's own
``"kind"`` says which it is (a genotype has none: it came first)."""

from __future__ import annotations

import os
from pathlib import Path

from autodeeplab.errors import GenotypeError
from autodeeplab.fileio import parse_json_document, read_document
from autodeeplab.space.autodeeplab.genotype import BUILTIN, Genotype
from autodeeplab.space.dints.arch import KIND as DINTS_KIND
from autodeeplab.space.dints.arch import DintsArch

AnyArchitecture = Genotype | DintsArch
ARCHITECTURE_TYPES: tuple[type, ...] = (Genotype, DintsArch)
ARCHITECTURE_FILES = tuple(t.FILE_NAME for t in ARCHITECTURE_TYPES)


def load_architecture(path: str | os.PathLike[str]) -> AnyArchitecture:
    """Read ``genotype.json`` or ``dints_arch.json`` (told apart by the document's ``kind``), validated."""
    path = Path(path)
    text = read_document(path, "architecture", GenotypeError)
    data = parse_json_document(text, str(path), GenotypeError)
    if isinstance(data, dict) and data.get("kind") == DINTS_KIND:
        return DintsArch.from_dict(data, str(path))
    return Genotype.from_dict(data, str(path))


def run_architecture_file(run_dir: str | os.PathLike[str]) -> Path | None:
    """The architecture file of a search or training run directory (None when it has none).

    A directory with both kinds is refused: which one was meant cannot be told."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in ARCHITECTURE_FILES if (run_dir / name).is_file()]
    if len(found) > 1:
        raise GenotypeError(
            f"{run_dir}: holds both {found[0].name} and {found[1].name}; name the file to use"
        )
    return found[0] if found else None


def resolve_architecture(spec: str | os.PathLike[str]) -> AnyArchitecture:
    """A built-in genotype name (``paper``), an architecture file, or a run directory holding one."""
    if isinstance(spec, str) and spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if path.is_dir():
        found = run_architecture_file(path)
        if found is None:
            raise GenotypeError(f"{spec}: a directory without {' or '.join(ARCHITECTURE_FILES)}")
        path = found
    if not path.exists():
        raise GenotypeError(
            f"{spec}: not a built-in genotype ({', '.join(BUILTIN)}), an architecture file "
            f"({' or '.join(ARCHITECTURE_FILES)}), or a run directory containing one"
        )
    return load_architecture(path)
