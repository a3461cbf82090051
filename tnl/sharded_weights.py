"""Sharded FSDP weights, consolidated in one process without a GPU or a process group.

Accelerate saves an FSDP model under `fsdp_state_dict_type: SHARDED_STATE_DICT` with torch.distributed.checkpoint
(DCP) as the folder `pytorch_model_fsdp_0/`: a `.metadata` file (every tensor's global shape, dtype and where its
shards lie) and one `__<rank>_0.distcp` file per process. Reading it into full tensors allocated from the metadata
gives the whole state dict, whatever the number of processes that wrote it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

FSDP_SHARDED = "pytorch_model_fsdp_*"  # Accelerate's folder name, one per prepared model
FSDP_FULL = "pytorch_model_fsdp.bin"  # Accelerate's file under FULL_STATE_DICT
_WRAPPER_KEY = "model"  # Accelerate saves {"model": state_dict}


def sharded_folders(folder: Path) -> list[Path]:
    """The DCP folders of `folder` (those with a `.metadata` file)."""
    return sorted(p for p in folder.glob(FSDP_SHARDED) if p.is_dir() and (p / ".metadata").is_file())


def read_sharded(folder: Path) -> dict[str, torch.Tensor]:
    """The full state dict in a DCP folder, on the CPU, read in this process (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(folder))
    meta = reader.read_metadata()
    full = {key: torch.empty(m.size, dtype=m.properties.dtype) for key, m in meta.state_dict_metadata.items()
            if isinstance(m, TensorStorageMetadata)}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        dcp.load(full, storage_reader=reader, no_dist=True)
    out = {}
    for key, tensor in full.items():
        # DCP flattens nested dicts: planner_data holds each key's path, ("model", "<parameter name>") here
        path = (meta.planner_data or {}).get(key)
        if isinstance(path, (tuple, list)) and len(path) == 2 and path[0] == _WRAPPER_KEY:
            key = path[1]
        out[key] = tensor
    return out


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a corrupt DCP folder raises beyond OSError/EOFError/unpickling errors: a failed read of a shard
    comes wrapped in a CheckpointException."""
    try:
        from torch.distributed.checkpoint import CheckpointException
    except ImportError:  # a torch built without torch.distributed reads no DCP folder either
        return ()
    return (CheckpointException,)
