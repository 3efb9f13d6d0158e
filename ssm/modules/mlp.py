"""Gated MLP (SwiGLU) of hybrid/Transformer blocks (``mamba_ssm.modules.mlp.GatedMLP``); with a
``process_group`` (appended after ``dtype``), tensor-parallel over the hidden channels."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from ssm.distributed.tensor_parallel import check_divisible, column_linear, row_linear


class GatedMLP(nn.Module):
    """fc2(y * activation(gate)) with (y, gate) the two halves of fc1(x); the hidden size
    (default 8/3 of the input) is rounded up to a multiple of ``multiple_of``."""

    def __init__(self, in_features, hidden_features=None, out_features=None, activation=F.silu, bias=False,
                 multiple_of=128, device=None, dtype=None, process_group=None, sequence_parallel=True):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        out_features = out_features if out_features is not None else in_features
        hidden_features = hidden_features if hidden_features is not None else int(8 * in_features / 3)
        hidden_features = (hidden_features + multiple_of - 1) // multiple_of * multiple_of
        check_divisible(process_group, hidden_features=hidden_features)
        self.hidden_features = hidden_features // (1 if process_group is None else process_group.size())
        # fc1 rows [y, gate] each hold this rank's hidden channels
        self.fc1 = column_linear(in_features, 2 * self.hidden_features, process_group, sequence_parallel, bias=bias,
                                 **factory_kwargs)
        self.activation = activation
        self.fc2 = row_linear(self.hidden_features, out_features, process_group, sequence_parallel, bias=bias,
                              **factory_kwargs)
        self.process_group = process_group

    def forward(self, x):
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * self.activation(gate))
