"""Sharded training (FSDP2, ``torch.distributed.fsdp.fully_shard``) of an open_clip model under Lightning's
``ModelParallelStrategy``.

Layout: every transformer block of both towers is its own FSDP unit (its parameters are gathered just before the
block runs and freed after it), then the whole open_clip model becomes the root unit, which holds what is left
(patch and token embeddings, norms, projections). Parameter names do not change (``fully_shard`` swaps the
module's class instead of wrapping it), so a full state dict has the keys and shapes of a single-device one.

The one exception is the 0-d temperature ``logit_scale`` (and ``logit_bias`` of SigLIP models): ``fully_shard``
cannot split a scalar and refuses it. Reshaping it to ``(1,)`` would change the checkpoint format, so it is left
out of sharding (``ignored_params``) and kept replicated as a plain tensor on every rank; since FSDP does not
reduce its gradient, :func:`all_reduce_grads` averages it across ranks before the optimizer step, exactly what
DDP would do. ``torch.nn.utils.clip_grad_norm_`` (Lightning's ``gradient_clip_val``) handles the mix of
sharded (DTensor) and replicated gradients once the latter are averaged.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

#: Attribute names under which open_clip, timm and Hugging Face towers keep their list of transformer blocks.
_BLOCK_LISTS = ("resblocks", "blocks", "layers", "layer")


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks of every tower (outermost lists only), in module order."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or name.rsplit(".", 1)[-1] not in _BLOCK_LISTS:
            continue
        if any(name.startswith(prefix + ".") for prefix in taken):
            continue
        taken.append(name)
        blocks.extend(module)
    return blocks


def unshardable_params(model: nn.Module) -> list[nn.Parameter]:
    """Parameters ``fully_shard`` cannot split (0-d scalars such as ``logit_scale``)."""
    return [p for p in model.parameters() if p.ndim == 0]


def shard_model(model: nn.Module, mesh: DeviceMesh) -> list[nn.Parameter]:
    """``fully_shard`` each transformer block, then the model as the root; returns the replicated parameters.

    The returned parameters (the 0-d ones) are plain tensors, identical on every rank; their gradients must be
    averaged with :func:`all_reduce_grads` before each optimizer step.
    """
    from torch.distributed.fsdp import fully_shard

    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(
            f"FSDP: found no transformer blocks ({', '.join(_BLOCK_LISTS)} lists) in {type(model).__name__}; "
            "this architecture cannot be sharded per block"
        )
    replicated = unshardable_params(model)
    ignored = set(replicated)
    for block in blocks:
        if any(p in ignored for p in block.parameters()):
            raise ValueError(f"FSDP: a transformer block of {type(model).__name__} holds a 0-d parameter")
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh, ignored_params=ignored)
    return replicated


def reshard_all(model: nn.Module) -> None:
    """Free the gathered parameters of every FSDP unit, so the next forward gathers them afresh.

    Needed after ``requires_grad`` of sharded parameters changed (a stage boundary of staged unfreezing): FSDP2
    copies ``requires_grad`` onto the gathered parameters when it gathers them, and the root unit keeps its
    parameters gathered after a forward without backward (validation), so without this the first training step
    after it would compute gradients for parameters that are frozen now.
    """
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def all_reduce_grads(params: Iterable[nn.Parameter], group: object = None) -> None:
    """Average the gradients of replicated parameters across ranks (what DDP's reducer does for them).

    Every rank must call it with the same parameters; a parameter without a gradient is skipped on all ranks
    alike, since which parameters receive gradients is the same everywhere.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not dist.is_available() or not dist.is_initialized():
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat /= dist.get_world_size(group)
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
        offset += grad.numel()



def data_parallel_mesh(strategy: object) -> DeviceMesh | None:
    """The mesh to shard over when ``strategy`` is ``ModelParallelStrategy``, ``None`` for any other strategy.

    Raises for the settings this module does not support: Lightning's ``fsdp`` strategy (FSDP1), tensor
    parallelism, and sharded (folder) checkpoints, which ``export``/``evaluate`` cannot read.
    """
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(strategy, FSDPStrategy):
        raise ValueError(
            "trainer.strategy: Lightning's 'fsdp' strategy (FSDP1) is not supported; shard with FSDP2 instead: "
            "strategy: {class_path: lightning.pytorch.strategies.ModelParallelStrategy, init_args: "
            "{data_parallel_size: <devices x nodes>, tensor_parallel_size: 1, save_distributed_checkpoint: false}}"
        )
    if not isinstance(strategy, ModelParallelStrategy):
        return None
    mesh = strategy.device_mesh
    tensor_parallel = mesh["tensor_parallel"].size()
    if tensor_parallel != 1:
        raise ValueError(
            f"trainer.strategy ModelParallelStrategy: tensor_parallel_size is {tensor_parallel} (the default 'auto' "
            "means all devices of a node); SARCLIPModule shards with FSDP2 only, so set tensor_parallel_size: 1 and "
            f"data_parallel_size: {mesh.size()} (devices x nodes)"
        )
    if strategy._save_distributed_checkpoint:
        raise ValueError(
            "trainer.strategy ModelParallelStrategy: set save_distributed_checkpoint: false; the default writes "
            "each checkpoint as a folder of shards, which export, evaluate and embed cannot read (false writes one "
            "full .ckpt file, the same format as single-device and DDP runs)"
        )
    return mesh["data_parallel"]
