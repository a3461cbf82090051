"""The kernel-development tools that run without a GPU (python -m tools.X): they must keep working, and report
what the model keeps."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _design_bytes_per_block() -> int:
    cfg = yaml.safe_load((ROOT / "configs" / "model" / "tiny.yaml").read_text())
    d, h, g = cfg["decoder_embed_dim"], cfg.get("hidden_dim", cfg["decoder_embed_dim"]), cfg["glu_dim"]
    bf16, fp32 = 2, 4
    # What a block (without LRPE) must keep per token under bf16 autocast, and nothing more:
    return (
        2 * (d * bf16 + fp32)  # each SRMSNorm: its bf16 output (shared with the next Linear) and 1/rms
        + 4 * h * bf16  # qkvu projection output: raw q, k, v (the attention op applies SiLU itself) and u
        + h * bf16 + fp32  # attention output o and its 1/rms (gated output norm); out_proj's input u * norm(o) is
        # formed again in backward
        + 2 * g * bf16  # l1(x), l2(x); their product is formed again in backward
    )


def test_activation_memory_per_block_matches_the_design():
    out = _run("-m", "tools.activation_memory", "--config", "tiny", "--T", "64", "128", "--device", "cpu")
    got = int(re.search(r"\*\*one block\*\* \| \*\*([\d,]+)\*\*", out).group(1).replace(",", ""))
    assert got == _design_bytes_per_block(), out


def test_compiled_model_keeps_what_the_design_keeps(monkeypatch):
    # torch.compile's partitioner, set up as train.compile does, must recompute SiLU(q), SiLU(k), the gated norm
    # and the SGLU product rather than keep them (the stock partitioner keeps all four)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = _run("-m", "tools.activation_memory", "--config", "tiny", "--T", "64", "128", "--device", "cpu", "--compile")
    got = int(re.search(r"\*\*one block, compiled\*\* \| \*\*([\d,]+)\*\*", out).group(1).replace(",", ""))
    assert got == _design_bytes_per_block(), out


def test_kernel_variant_check_catches_a_changed_kernel(tmp_path):
    """tools.bench_kernel_variants (under the interpreter: correctness only) passes an unchanged copy of the kernels
    and fails one whose output is off by 1%."""
    import os

    src = (ROOT / "tnl" / "ops" / "lightning_attn" / "triton_kernels.py").read_text()
    assert src.count("            o = o * sout\n") == 1
    same, off = tmp_path / "same.py", tmp_path / "off.py"
    same.write_text(src)
    off.write_text(src.replace("            o = o * sout\n", "            o = o * sout * 1.01\n"))
    env = {**os.environ, "TRITON_INTERPRET": "1", "TNL_AUTOTUNE": "0"}
    cmd = [sys.executable, "-m", "tools.bench_kernel_variants", "--shapes", "2,40,16,16", "--heads", "2",
           "--rounds", "1"]
    ok = subprocess.run([*cmd, str(same)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0 and "| same.py | - | - | 0.0e+00 |" in ok.stdout, ok.stdout + ok.stderr[-2000:]
    bad = subprocess.run([*cmd, str(off)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "FAIL" in bad.stdout, bad.stdout + bad.stderr[-2000:]


def test_config_probe_reports_each_config_against_the_reference():
    """tools.probe_attn_configs (interpreter: its one config) runs forward+backward in a child per config and
    compares with the float64 reference; a tolerance below bf16's error turns the same run into a failure."""
    import os

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "tools.probe_attn_configs", "--shapes", "1,40,2,32,16,silu", "--jobs", "1", "--init",
           "--misaligned"]
    ok = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0 and re.search(r"\| 1,40,2,32,16 \| True \| \(\d+, \d+, \d+, \d+\) \| OK \|", ok.stdout), \
        ok.stdout + ok.stderr[-2000:]
    strict = subprocess.run([*cmd, "--tol", "1e-9"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert strict.returncode == 1 and "| WRONG |" in strict.stdout, strict.stdout + strict.stderr[-2000:]
