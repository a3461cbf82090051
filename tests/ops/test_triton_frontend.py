"""Triton's frontend (Python AST -> TTIR for an sm_90 target) on the kernel variants the launchers use.

The CPU tests run the kernels under TRITON_INTERPRET=1, which executes their Python bodies and so accepts code the
compiler rejects (a variable rebound to a pointer of another shape across a runtime `if` once passed every
interpreted test and failed on the GPU). Building each variant's IR needs no GPU and no ptxas, so such errors fail
here first.
"""

import inspect
import itertools

import pytest

from tnl.settings import triton_interpret

pytest.importorskip("triton")
if triton_interpret():
    pytest.skip("compiles the kernels; the interpreter child runs the numeric tests", allow_module_level=True)
pytest.importorskip("triton.backends.nvidia.compiler")

from tnl.ops.lightning_attn import triton_kernels as K  # noqa: E402


def build_ir(fn, pointers: dict[str, str], floats: set[str], constexprs: dict) -> None:
    """Compile `fn` to Triton IR for sm_90 with these argument types and constexpr values (raises on an error)."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource

    sig = {n: "constexpr" if n in constexprs else pointers.get(n, "fp32" if n in floats else "i32")
           for n in fn.arg_names}
    target = GPUTarget("cuda", 90, 32)
    backend = CUDABackend(target)
    options = backend.parse_options({})
    ctx = ir.context()
    ir.load_dialects(ctx)
    backend.load_dialects(ctx)
    src = ASTSource(fn, sig, {(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    rest = (options, backend.get_codegen_implementation(options), backend.get_module_map(), ctx)
    src.make_ir(*((target, *rest) if "target" in inspect.signature(src.make_ir).parameters else rest))


def _chunk_pointers(dtype: str, tma: tuple[int, int, int] | None = None) -> dict[str, str]:
    """Argument types; `tma` = (C, BD, BE): QD, KD, VD, OD are TMA descriptors of those blocks, else pointers."""
    args = {**{n: f"*{dtype}" for n in ("QR", "KR", "VR", "OUT", "XRAW", "QD", "KD", "VD", "OD")},
            **{n: "*fp32" for n in ("S_INIT", "PBUF", "S_OUT", "DECAY", "SUB")}, "SEGS": "*i32"}
    if tma:
        c, bd, be = tma
        args |= {n: f"tensordesc<{dtype}[1,{c},1,{w}]>" for n, w in (("QD", bd), ("KD", bd), ("VD", be), ("OD", be))}
    return args


def _chunk_variants():
    # every combination of direction, initial state and the three ways a segment gets its start state, then
    # the options that change what is loaded (activations, varlen, D=256, fp32)
    for reverse, init, write_o, seg, start in itertools.product((False, True), (False, True), (False, True),
                                                                 (False, True), ("load", "prefix", "p_t", "chain")):
        if start != "load" and not (seg and write_o):
            continue
        yield dict(REVERSE=reverse, HAS_INIT=init, INIT_SHIFT=int(reverse and init), WRITE_O=write_o,
                   STORE_FINAL=True, FINAL_DECAY=int(reverse), SEGMENTED=seg, PREFIX=start == "prefix",
                   P_T=start == "p_t", CHAIN=start == "chain"), "bf16"
    yield dict(ACT_Q=True, ACT_K=True, SEGMENTED=True, PREFIX=True, HAS_INIT=True), "bf16"
    yield dict(ACT_V=True, DACT=True, REVERSE=True, SEGMENTED=True, PREFIX=True), "fp16"
    yield dict(IS_VARLEN=True, SEGMENTED=True, HAS_INIT=True), "bf16"
    yield dict(BD=256, EARLY_UPDATE=True, SEGMENTED=True, PREFIX=True), "bf16"
    yield dict(PREC="tf32x3", SEGMENTED=True, PREFIX=True, PREFIX_C=128, HAS_INIT=True), "fp32"
    # TMA descriptors in the chunk loop: forward with a prefix, reverse with SiLU' and transposed start states,
    # the state-only pass, D=256
    yield dict(TMA=True, SEGMENTED=True, PREFIX=True, HAS_INIT=True, ACT_Q=True, ACT_K=True), "bf16"
    yield dict(TMA=True, REVERSE=True, SEGMENTED=True, P_T=True, DACT=True, HAS_INIT=True, INIT_SHIFT=1), "fp16"
    yield dict(TMA=True, WRITE_O=False, SEGMENTED=True), "bf16"
    yield dict(TMA=True, SEGMENTED=True, CHAIN=True, HAS_INIT=True, REVERSE=True, INIT_SHIFT=1), "bf16"
    yield dict(BD=256, EARLY_UPDATE=True, TMA=True, SEGMENTED=True, CHAIN=True), "bf16"
    yield dict(TMA=True, BD=256, EARLY_UPDATE=True), "bf16"


@pytest.mark.parametrize("variant", list(_chunk_variants()), ids=lambda v: "-".join(
    f"{k}={x}" for k, x in v[0].items() if x not in (False, 0)) + f"-{v[1]}")
def test_chunk_kernel_variant_compiles(variant):
    extra, dtype = variant
    constexprs = dict(BD=64, BE=64, C=64, REVERSE=False, HAS_INIT=False, INIT_SHIFT=0, WRITE_O=True,
                      STORE_FINAL=False, FINAL_DECAY=0, IS_VARLEN=False, SEGMENTED=False, PREC="tf32", UPCAST=False,
                      ACT_Q=False, ACT_K=False, ACT_V=False, DACT=False, P_T=False, EARLY_UPDATE=False, PREFIX=False,
                      PREFIX_C=256, TMA=False, CHAIN=False)
    constexprs.update(extra)
    tma = (constexprs["C"], constexprs["BD"], constexprs["BE"]) if constexprs.get("TMA") else None
    build_ir(K._chunk_kernel, _chunk_pointers(dtype, tma), {"skv", "sout"}, constexprs)


@pytest.mark.parametrize("reverse,init", [(False, False), (True, True), (False, True)])
def test_scan_kernel_compiles(reverse, init):
    build_ir(K._scan_kernel, {n: "*fp32" for n in ("PBUF", "S_INIT", "DECAY")} | {"SEQINFO": "*i32"}, set(),
             dict(BD=64, BE=64, REVERSE=reverse, HAS_INIT=init, INIT_SHIFT=int(reverse and init)))


@pytest.mark.parametrize("grad", [True, False])
def test_cross_entropy_rows_kernel_compiles(grad):
    from tnl.ops.cross_entropy.triton_kernels import _ce_rows_kernel

    build_ir(_ce_rows_kernel, {"logits_ptr": "*bf16", "targets_ptr": "*i64", "loss_ptr": "*fp32"}, set(),
             dict(BLOCK_V=4096, WRITE_GRAD=grad))


def test_a_rebound_pointer_is_caught():
    """The check itself: that mistake, in a small kernel, fails to build."""
    import triton
    import triton.language as tl

    def bad(X, Y, flag, BLOCK: tl.constexpr, INIT: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        if INIT:
            p = X + offs  # a block of pointers
            tl.store(Y + offs, tl.load(p))
        if flag > 0:
            p = X + flag  # one pointer: another type for the same name across a runtime `if`
            tl.store(Y, tl.load(p))

    with pytest.raises(triton.compiler.errors.CompilationError):
        build_ir(triton.jit(bad), {"X": "*fp32", "Y": "*fp32"}, set(), dict(BLOCK=16, INIT=True))
