"""Scale-out on torch.distributed (docs/distributed_training.md)."""
from ssm.distributed import context_parallel

__all__ = ["context_parallel"]
