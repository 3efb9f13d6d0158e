"""The inference-cache protocol shared by the layers and the decode loop (COMPAT §3)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class InferenceParams:
    """State of one decode: layers keep their caches in ``key_value_memory_dict[layer_idx]``.

    Layers run their prefill path when ``seqlen_offset == 0`` and their one-step path otherwise.
    ``lengths_per_sample`` (b,) int32, when set, holds each row's number of cached tokens.
    """

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    batch_size_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)
    lengths_per_sample: Optional[torch.Tensor] = None

    def reset(self, max_seqlen: int, max_batch_size: int) -> None:
        """Start a new decode on the same caches (prefill overwrites the states in place)."""
        self.max_seqlen = max_seqlen
        self.max_batch_size = max_batch_size
        self.seqlen_offset = 0
        if self.lengths_per_sample is not None:
            self.lengths_per_sample.zero_()
