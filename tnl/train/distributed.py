"""The run's distributed setup as Accelerate resolved it: the strategy, world size and device, printed and logged at
the start of every run, so a launch that fell back to another strategy (or to one process) shows at once."""

from __future__ import annotations

from typing import Any


def describe_setup(accelerator: Any) -> dict[str, Any]:
    """{"strategy": "single" | "DDP" | "FSDP" | ..., "world_size", "device", "fsdp_version", "state_dict_type"}, read
    from the Accelerator's state. The FSDP fields are None unless the strategy is FSDP; the device is its type (cpu,
    cuda, ...)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    kind = state.distributed_type
    row: dict[str, Any] = {"strategy": None, "world_size": state.num_processes, "device": accelerator.device.type,
                           "fsdp_version": None, "state_dict_type": None}
    if kind == DistributedType.NO:
        row["strategy"] = "single"
    elif kind == DistributedType.FSDP:
        plugin = state.fsdp_plugin
        row["strategy"] = "FSDP"
        row["fsdp_version"] = plugin.fsdp_version
        sd = plugin.state_dict_type
        row["state_dict_type"] = getattr(sd, "name", str(sd))
    elif kind.name.startswith("MULTI_"):  # MULTI_CPU, MULTI_GPU, ...: DistributedDataParallel
        row["strategy"] = "DDP"
    else:  # DeepSpeed, XLA, ...
        row["strategy"] = kind.name
    return row


def setup_line(row: dict[str, Any]) -> str:
    """One line: `distributed: DDP, world size 2, device cpu` (FSDP adds its version and state-dict type)."""
    strategy = row["strategy"]
    if strategy == "FSDP":
        strategy = f"FSDP (version {row['fsdp_version']}, {row['state_dict_type']})"
    return f"distributed: {strategy}, world size {row['world_size']}, device {row['device']}"


def log_setup(metrics: Any, step: int, row: dict[str, Any]) -> None:
    """A `split: setup` row of metrics.jsonl, unless the file's last one (a resumed run's) already says the same:
    the file then reads as one unbroken run, and a resume under another setup shows where it changed."""
    from .metrics import read_metrics

    if not metrics.enabled:
        return
    old = [r for r in read_metrics(metrics.path) if r.get("split") == "setup"] if metrics.path.exists() else []
    if not old or {k: old[-1].get(k) for k in row} != row:
        metrics.log({"step": step, "split": "setup", **row})


def check_setup(row: dict[str, Any]) -> None:
    """Refuse a setup other than the launch asked for (`settings.launch`), before anything is read or written:
    Accelerate falls back without a word (no GPU for the processes: each trains alone; FSDP on CPUs: DDP)."""
    from tnl import settings
    from tnl.errors import UserError

    launched, fsdp_requested = settings.launch()
    if launched > 1 and row["world_size"] != launched:
        raise UserError(f"the launch started {launched} processes but Accelerate set up {row['strategy']} with world "
                        f"size {row['world_size']} on {row['device']}: each would train alone; on a machine without "
                        "GPUs set ACCELERATE_USE_CPU=1 (DDP over gloo), or launch on GPUs")
    if fsdp_requested and row["strategy"] != "FSDP":
        raise UserError(f"the launch asked for FSDP but Accelerate set up {row['strategy']} on {row['device']} "
                        "(Accelerate runs FSDP on GPUs only); launch on GPUs, or train with DDP: "
                        "configs/accelerate/ddp_2gpu.yaml, or torchrun with ACCELERATE_USE_CPU=1 on CPUs")
