"""Every Triton kernel compiles for sm_90 (H100/H200) through its real call sites, without a GPU.

The interpreter tests check the kernels' arithmetic; this checks that the GPU compiler accepts them
(tests/ops/sm90_compile.py swaps in an sm_90 driver and compiles instead of launching).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e .[triton])")

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {  # every kernel the ops launch (helpers called inside kernels are compiled with them)
    "ddts_kernels": ["_prep", "_fwd", "_fwd_chunk", "_bwd_state", "_bwd_chunk", "_bwd_intra", "_chunk_totals",
                     "_bwd_gates", "_decode", "_walk", "_walk_carry", "_segment_keys"],
    "short_conv_kernels": ["_fwd", "_bwd_dpre", "_bwd_dx"],
    "swska_kernels": ["_fwd", "_bwd_delta", "_bwd_dq", "_bwd_dkdv", "_decode_split", "_decode_combine"],
    "norm": ["_fwd", "_bwd"],
    "gating": ["_fwd", "_bwd", "_low_rank_fwd", "_low_rank_bwd"],
    "rotary": ["_rotate"],
    "cross_entropy": ["_xent_rows"],
    "_common": ["_column_sum"],
}


def test_every_kernel_compiles_for_sm90():
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])}
    proc = subprocess.run([sys.executable, "-m", "tests.ops.sm90_compile"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"compile run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    compiled = json.loads(proc.stdout.strip().splitlines()[-1])["compiled"]
    expected = {f"{mod}.{name}" for mod, names in KERNELS.items() for name in names}
    assert not expected - compiled.keys(), f"never compiled: {sorted(expected - compiled.keys())}"
    assert not compiled.keys() - expected, f"new kernels, add them to KERNELS: {sorted(compiled.keys() - expected)}"


def test_kernel_resources_reports_every_ddts_training_kernel():
    """benchmarks/kernel_resources.py (registers and spills per kernel, read from the sm_90 cubins) runs
    on a CPU and reports a number for every DDTS kernel of the split and fused training forms."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "benchmarks/kernel_resources.py", "--V", "128"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, f"kernel_resources failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    rows = {line.split()[0]: line.split()[-3:] for line in proc.stdout.splitlines() if line.startswith("_")}
    for name in ("_prep", "_walk", "_fwd", "_fwd_chunk", "_bwd_state", "_bwd_chunk", "_bwd_intra", "_chunk_totals",
                 "_bwd_gates"):  # fmt: skip
        assert name in rows, f"{name} not reported:\n{proc.stdout}"
        reg, stack, smem = (int(x) for x in rows[name])
        assert 0 < reg <= 255 and stack >= 0 and smem >= 0, rows[name]
