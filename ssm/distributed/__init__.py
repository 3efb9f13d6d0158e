"""Scale-out on ``torch.distributed`` (docs/tensor_parallel.md, docs/distributed_training.md):
collectives with autograd and tensor-parallel linear layers as in ``mamba_ssm.distributed``; shard
plans for checkpoints; context parallelism (a sequence split along L across ranks)."""
from ssm.distributed import context_parallel
from ssm.distributed.collectives import all_gather, all_reduce, copy_to_parallel_region, reduce_scatter
from ssm.distributed.tensor_parallel import ColumnParallelLinear, RowParallelLinear

__all__ = ["all_gather", "all_reduce", "copy_to_parallel_region", "reduce_scatter", "ColumnParallelLinear",
           "RowParallelLinear", "context_parallel"]
