"""Data-parallel learning: what the learner needs of the other ranks (docs/method.md section 9).

`Collective` is the whole interface; `SingleProcess` is the one rank of a plain run (identity, no
torch.distributed on its path) and `TorchCollective` is the same over torch.distributed (gloo on CPU, NCCL on
GPU), joined from the environment torchrun sets.
"""

from pegp_stream.distributed.collective import Collective, SingleProcess
from pegp_stream.distributed.torch_collective import TorchCollective

__all__ = ["Collective", "SingleProcess", "TorchCollective"]
