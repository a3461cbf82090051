"""A deterministic, sharded, exactly resumable sampler over window indices.

Epoch e visits a permutation drawn from (seed, e); rank r of W takes every W-th index, so all ranks see
the same number of samples. The position is a single count of samples this rank consumed, which the
training loop saves in checkpoints: resuming continues at the same index, repeating and skipping nothing.
"""

from __future__ import annotations

import torch


class ResumableSampler(torch.utils.data.Sampler[int]):
    def __init__(self, num_samples: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if num_samples < world_size:
            raise ValueError(f"{num_samples} windows cannot be shared by {world_size} ranks; add data or ranks")
        self.num_samples, self.seed, self.rank, self.world_size, self.shuffle = (
            num_samples, seed, rank, world_size, shuffle)
        self.per_rank = num_samples // world_size  # the remainder is dropped each epoch, so ranks stay in step
        self.consumed = 0

    def epoch_indices(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        return order[self.rank : self.per_rank * self.world_size : self.world_size].tolist()

    @property
    def epoch(self) -> int:
        return self.consumed // self.per_rank

    def __iter__(self):
        """Endless: continues from `consumed`, reshuffling at every epoch boundary."""
        epoch, pos = divmod(self.consumed, self.per_rank)
        while True:
            indices = self.epoch_indices(epoch)
            yield from indices[pos:]
            epoch, pos = epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed, "world_size": self.world_size, "seed": self.seed,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, int], log=print) -> None:
        if state["num_samples"] != self.num_samples or state["seed"] != self.seed:
            log(f"sampler: data or seed changed since the checkpoint ({state['num_samples']} -> {self.num_samples} "
                f"windows, seed {state['seed']} -> {self.seed}); continuing from the same sample count")
        if state["world_size"] == self.world_size:
            self.consumed = state["consumed"]
        else:
            total = state["consumed"] * state["world_size"]
            self.consumed = total // self.world_size
            log(f"sampler: world size changed {state['world_size']} -> {self.world_size}; {total} samples were "
                f"consumed in all, each rank resumes after {self.consumed} (order differs from an unbroken run)")
