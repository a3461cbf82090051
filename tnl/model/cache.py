"""The decoding cache of `TransnormerForCausalLM` (`past_key_values`): a recurrent state per TNL layer, keys and
values per softmax layer, both for the hybrid. Its size does not grow with the context for TNL layers."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.cache_utils import Cache


class TransnormerCacheLayer:
    """Per-layer decoding state. TNL: `state` [B, H, D, E] fp32 only (constant memory). Softmax: `keys`/`values`
    [B, Hkv, S, Dh]. Hybrid: `state` over completed blocks + `keys`/`values`/`lin_keys` of the current partial block.
    `seen` counts tokens consumed (LRPE / RoPE position offset)."""

    is_compileable = False
    is_sliding = False
    is_croppable = False
    supports_early_init = False
    is_initialized = True

    def __init__(self) -> None:
        self.static = False  # True: decode steps update `state` in place (fixed address, for CUDA graphs)
        self.state: torch.Tensor | None = None
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.lin_keys: torch.Tensor | None = None
        self.seen = 0

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for name in ("state", "keys", "values", "lin_keys"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, fn(t))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices])

    def reset(self) -> None:
        self.__init__()

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def offload(self) -> None:  # nothing to offload: states are small
        pass

    def prefetch(self) -> None:
        pass

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise NotImplementedError("a recurrent state cannot be rolled back; TransnormerCache does not support crop")


class TransnormerCache(Cache):
    """`past_key_values` of `TransnormerForCausalLM`: one `TransnormerCacheLayer` per decoder layer.

    Works with `generate()` (greedy, sampling, beam search through `reorder_cache`, and batch expansion).
    Rolling back tokens (`crop`, assisted decoding) is not possible for a recurrent state.
    """

    is_compileable = False

    def __init__(self, num_layers: int = 0) -> None:
        layers = [TransnormerCacheLayer() for _ in range(num_layers)]
        try:  # transformers >= 5: Cache(layers=...)
            super().__init__(layers=layers)
        except TypeError:  # transformers 4.x
            super().__init__()
            self.layers = layers

    def layer(self, idx: int) -> TransnormerCacheLayer:
        while len(self.layers) <= idx:
            self.layers.append(TransnormerCacheLayer())
        return self.layers[idx]

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"TransnormerCache(layers={len(self.layers)}, seen={self.get_seq_length()})"

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        idx = layer_idx or 0
        return self.layers[idx].seen if idx < len(self.layers) else 0

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def get_usable_length(self, new_seq_length: int, layer_idx: int | None = 0) -> int:
        return self.get_seq_length(layer_idx)

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return query_length + self.get_seq_length(layer_idx), 0

    @property
    def is_sliding(self) -> list[bool]:
        return [False] * len(self.layers)

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return len(self.layers) > 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        for layer in self.layers:
            layer.reorder_cache(beam_idx)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for layer in self.layers:
            layer.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for layer in self.layers:
            layer.batch_select_indices(indices)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def crop(self, max_length: int) -> None:
        if max_length < 0 or max_length < self.get_seq_length():
            raise NotImplementedError("TransnormerCache holds a recurrent state and cannot be cropped")

    def make_static(self, static: bool = True) -> None:
        """Update TNL states in place from now on (their addresses stay fixed, so a decode step can be graphed).
        Positions then must come from `position_ids`, as the Python-side offset is not replayed."""
        for layer in self.layers:
            layer.static = static

    def memory_bytes(self) -> int:
        """Bytes held by all cached tensors (for constant-memory checks)."""
        total = 0
        for layer in self.layers:
            for t in (layer.state, layer.keys, layer.values, layer.lin_keys):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
