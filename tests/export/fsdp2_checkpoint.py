"""Run under torchrun (gloo, CPU): shard a tiny tnl model with FSDP2 (torch's fully_shard) over the processes,
take two optimizer steps (AdamW, eps=1: the update follows the gradient's size) and save it as Accelerate's
SHARDED_STATE_DICT does: {"model": the sharded state dict} with torch.distributed.checkpoint into
FOLDER/pytorch_model_fsdp_0/. Rank 0 also writes the gathered full state dict to FOLDER/full.pt (the reference) and
each step's loss, the mean over the processes, to FOLDER/losses.json.

    python -m torch.distributed.run --nproc_per_node=2 tests/export/fsdp2_checkpoint.py FOLDER VOCAB
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.helpers.eval_common import make_tnl  # noqa: E402


def batch(vocab: int, world: int) -> torch.Tensor:
    """The global batch: 2 sequences of 16 tokens per process."""
    return torch.randint(0, vocab, (2 * world, 16), generator=torch.Generator().manual_seed(0))


def main(folder: Path, vocab: int) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    model = make_tnl(vocab, seed=3, decoder_layers=2).train()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, eps=1.0)
    ids = batch(vocab, world)
    losses = []
    for _ in range(2):
        loss = model(input_ids=ids[2 * rank: 2 * rank + 2], labels=ids[2 * rank: 2 * rank + 2]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)  # every process sees as many tokens: the global batch's mean
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(folder / "pytorch_model_fsdp_0"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full, folder / "full.pt")
        (folder / "losses.json").write_text(json.dumps(losses))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
