"""Shared test settings.

Tests use tiny tensors, for which one intra-op thread is as fast as several and immune to
oversubscription (with several torch processes on 2 cores, OpenMP spin-waiting made tiny ops ~15x
slower). Tests that need real data find it in ``../shared/data`` beside the repository.
"""

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def camvid_root() -> Path:
    root = SHARED_DATA / "camvid"
    if not (root / "train.txt").is_file():
        pytest.skip(f"real CamVid not found at {root} (see shared/README.md)")
    return root
