"""SimpleRMSNorm forward/backward pieces for the model's autograd Functions: fused Triton row kernels on a CUDA
GPU in eager mode, the same formulas in PyTorch elsewhere (and under torch.compile, which fuses them itself)."""

from .fused import gated_norm_backward, gated_norm_forward, norm_backward, norm_forward

__all__ = ["gated_norm_backward", "gated_norm_forward", "norm_backward", "norm_forward"]
