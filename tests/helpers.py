"""The one tolerance helper every numerical test uses, and the runner of benchmark scripts' smoke checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, *, rel: float, atol: float | None = None):
    """Fail, naming ``name``, if ``actual`` has NaN/inf, a different shape, a relative RMS error above
    ``rel`` (||a - e|| / ||e||), or (when ``atol`` is given) an element off by more than ``atol``."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(a).all(), f"{name}: contains NaN/inf"
    err = (a - e).norm() / e.norm().clamp_min(1e-30)
    amax = (a - e).abs().max().item() if a.numel() else 0.0
    assert err <= rel, f"{name}: relative RMS error {err:.3e} > {rel:.1e} (abs max {amax:.3e})"
    if atol is not None:
        assert amax <= atol, f"{name}: abs max error {amax:.3e} > {atol:.1e} (relative {err:.3e})"


def run_benchmark(script: str, *args: str) -> str:
    """Run ``benchmarks/<script>`` with ``args`` from the repo root (a ``--smoke`` CPU check); its stdout.
    A non-zero exit fails the test with the script's stderr."""
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, f"benchmarks/{script}", *args]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
