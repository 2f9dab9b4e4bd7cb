"""benchmarks/gpu_check.py on a machine without CUDA: one line, exit 4, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_check_without_cuda_says_so_in_one_line(tmp_path: Path):
    out = tmp_path / "gpu"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 4
    assert done.stderr.strip() == "no CUDA device" and done.stdout == ""
    assert not out.exists()
