"""Pack a flat token array into fixed windows of `seq_len` tokens (plus one for the shifted labels).

In document-aware mode each window also carries the offsets where documents start, and batches are
flattened into one packed row with `cu_seqlens`, so no attention state crosses a document boundary.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import DataError
from .token_cache import TokenArray


class PackedWindows(torch.utils.data.Dataset):
    """Window i holds tokens [i*T, i*T + T] (T + 1 tokens: inputs and next-token labels)."""

    def __init__(self, array: TokenArray, seq_len: int, document_aware: bool = False, split: str = "train"):
        if seq_len < 1:
            raise DataError(f"train.seq_len must be >= 1, got {seq_len}")
        self.array, self.seq_len, self.document_aware = array, seq_len, document_aware
        self.num_windows = (len(array.tokens) - 1) // seq_len
        if self.num_windows < 1:
            raise DataError(
                f"split '{split}' has {len(array.tokens)} tokens, fewer than one window of train.seq_len={seq_len}+1; "
                "lower train.seq_len or add data"
            )

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = i * self.seq_len
        x = torch.from_numpy(self.array.tokens[start : start + self.seq_len + 1].astype(np.int64))
        item = {"input_ids": x[:-1], "labels": x[1:]}
        if self.document_aware:
            starts = self.array.doc_starts
            lo, hi = np.searchsorted(starts, [start + 1, start + self.seq_len])
            inner = (starts[lo:hi] - start).tolist()
            item["doc_bounds"] = torch.tensor([0, *inner, self.seq_len], dtype=torch.int32)
        return item


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack windows into [B, T]; with document bounds, flatten to [1, B*T] and build `cu_seqlens`."""
    input_ids = torch.stack([it["input_ids"] for it in items])
    labels = torch.stack([it["labels"] for it in items])
    if "doc_bounds" not in items[0]:
        return {"input_ids": input_ids, "labels": labels}
    t = input_ids.shape[1]
    cu = [0]
    for row, it in enumerate(items):
        cu.extend((it["doc_bounds"][1:] + row * t).tolist())
    return {"input_ids": input_ids.reshape(1, -1), "labels": labels.reshape(1, -1),
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32)}
