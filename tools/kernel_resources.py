"""Compile the lightning-attention Triton kernels ahead of time for a GPU target and print their resource use
(registers, stack frame, shared memory) per block configuration: no GPU needed, only Triton's bundled ptxas.

    python -m tools.kernel_resources [--arch 90] [--dims 128,128 64,64 256,128]

A stack frame above a few bytes at 255 registers means spills to local memory; compare configurations here
before spending device time on them. Kernels are compiled as the JIT compiles the usual call (contiguous head
dims, 16-byte aligned pointers and strides). The numbers come from the installed Triton, which may differ from
the GPU machine's version.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import triton
import triton.backends.nvidia
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tnl.ops.lightning_attn import triton_kernels as K
from tnl.ops.lightning_attn.plan import pow2, prefix_chunk
from tnl.ops.lightning_attn.tuning import MAIN_CONFIGS, TMA_CONFIGS

_POINTERS = {"S_INIT": "*fp32", "PBUF": "*fp32", "S_OUT": "*fp32", "DECAY": "*fp32", "SUB": "*fp32", "SEGS": "*i32"}
_DESCRIPTORS = {"QD", "KD", "VD", "OD"}  # TMA descriptors in a TMA config, else pointers
_TENSORS = {"QR", "KR", "VR", "OUT", "XRAW"} | _DESCRIPTORS  # in the input dtype
_FLOATS = {"skv", "sout"}


def _signature(fn, constexprs: dict, dtype: str) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _POINTERS:
            sig[name] = _POINTERS[name]
        elif name in _DESCRIPTORS and constexprs.get("TMA"):
            width = constexprs["BD"] if name in ("QD", "KD") else constexprs["BE"]
            sig[name] = f"tensordesc<{dtype}[1,{constexprs['C']},1,{width}]>"
        elif name in _TENSORS:
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "fp32" if name in _FLOATS else "i32"
    return sig


_UNIT_STRIDES = ("sq_d", "sk_d", "sv_d", "so_d", "sx_d")
_ALIGNED_INTS = ("sq_b", "sq_t", "sq_h", "sk_b", "sk_t", "sk_h", "sv_b", "sv_t", "sv_h", "so_b", "so_t", "so_h",
                 "DK", "DV", "H")


def _specialised(fn, constexprs: dict, dtype: str) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as the JIT compiles the common call: contiguous head dims (stride 1 becomes
    a constant), pointers, strides and head dims divisible by 16. Without this the compiler cannot vectorise or
    pipeline the tile loads (cp.async needs 16-byte groups) and reports spills the real kernels do not have."""
    ce = dict(constexprs)
    ce.update({n: 1 for n in _UNIT_STRIDES if n in fn.arg_names})
    sig = _signature(fn, ce, dtype)
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
             if n not in ce and (sig[n].startswith("*") or n in _ALIGNED_INTS)}
    return sig, ce, attrs


def resources(fn, constexprs: dict, warps: int, stages: int, arch: int, dtype: str = "bf16") -> str:
    sig, ce, attrs = _specialised(fn, constexprs, dtype)
    src = ASTSource(fn=fn, signature=sig, constexprs=ce, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps,
                                                                              "num_stages": stages})
    tool = Path(triton.backends.nvidia.__file__).parent / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        Path(cubin).write_bytes(kernel.asm["cubin"])
        out = subprocess.run([str(tool), "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    fields = dict(f.split(":") for f in next(line for line in out.splitlines() if "REG:" in line).split())
    return f"regs {fields['REG']:>3}  stack {fields['STACK']:>5}  smem {kernel.metadata.shared:>6}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = H100/H200)")
    ap.add_argument("--dims", nargs="+", default=["128,128", "64,64", "256,128"])
    args = ap.parse_args()
    print(f"triton {triton.__version__}, sm_{args.arch}, bf16")
    print(f"{'kernel':<22} {'D,E':>8} {'C,BE,warps,stages':>18}  resources (',tma': TMA descriptors)")
    for dims in args.dims:
        d, e = (int(x) for x in dims.split(","))
        bd = pow2(d)
        for role, reverse, act, dact in (("fwd", False, True, False), ("dq", False, False, True),
                                         ("dv", True, True, False)):
            for c, be, w, s, *tma in MAIN_CONFIGS + TMA_CONFIGS:
                be = min(be, pow2(e))
                ce = dict(BD=bd, BE=be, C=c, REVERSE=reverse, HAS_INIT=False, INIT_SHIFT=0, WRITE_O=True,
                          STORE_FINAL=False, FINAL_DECAY=0, IS_VARLEN=False, SEGMENTED=False, PREC="tf32",
                          UPCAST=False, ACT_Q=act and not reverse, ACT_K=act, ACT_V=False, DACT=dact, P_T=False,
                          EARLY_UPDATE=bd >= 256, PREFIX=False, PREFIX_C=prefix_chunk(c, False), TMA=bool(tma),
                          CHAIN=False)
                res = resources(K._chunk_kernel, ce, w, s, args.arch)
                print(f"{'chunk ' + role + (' +silu' if act or dact else ''):<22} {dims:>8} "
                      f"{f'{c},{be},{w},{s}' + (',tma' if tma else ''):>18}  {res}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
