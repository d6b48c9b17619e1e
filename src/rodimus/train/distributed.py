"""torch.distributed plumbing: process-group setup under torchrun, and the separate parallelize step
(DDP, or FSDP2 `fully_shard` per block then the root) kept out of the model files."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)


@dataclass
class DistInfo:
    rank: int = 0  # global rank
    local_rank: int = 0  # rank on this host (picks the GPU)
    world_size: int = 1  # number of processes
    device: torch.device = torch.device("cpu")  # this rank's device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (env WORLD_SIZE > 1); otherwise single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=device)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj, info: DistInfo) -> list:
    if not info.distributed:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, info: DistInfo):
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Transformer/recurrent blocks: the classes named in `_no_split_modules`, else ModuleList members."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if found:
        return found
    return [m for lst in model.modules() if isinstance(lst, nn.ModuleList) for m in lst]


def resolve_mode(mode: str, info: DistInfo) -> str:
    if mode == "auto":
        return "ddp" if info.distributed else "none"
    if mode in ("ddp", "fsdp") and not info.distributed:
        return "none"  # nothing to shard or replicate across
    return mode


def parallelize(model: nn.Module, mode: str, info: DistInfo, bf16: bool) -> nn.Module:
    """Wrap a model already on its device for data parallelism. Returns the module to call forward on."""
    if mode == "none":
        return model
    if mode == "ddp":
        ids = [info.local_rank] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
        kw = {"mp_policy": mp} if mp is not None else {}
        for block in _blocks(model):
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        return model
    raise ValueError(f"parallel must be one of none, ddp, fsdp, got {mode!r}")


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optim: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Unsharded model and optimizer state (collective: every rank calls; rank 0 gets the tensors)."""
    base = unwrap(model)
    return get_model_state_dict(base, options=_FULL), get_optimizer_state_dict(base, optim, options=_FULL)


def load_full_state(model: nn.Module, optim: torch.optim.Optimizer, model_sd: dict, optim_sd: dict) -> None:
    """Load unsharded state read by every rank from the checkpoint files (each rank keeps its shard)."""
    base = unwrap(model)
    opts = StateDictOptions(full_state_dict=True, strict=True)
    set_model_state_dict(base, model_sd, options=opts)
    set_optimizer_state_dict(base, optim, optim_sd, options=opts)
