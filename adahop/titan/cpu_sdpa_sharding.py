"""DTensor sharding strategies for the CPU flash-attention ops, so that torchtitan's tensor parallelism runs on CPU.

torch registers how a DTensor propagates through the CUDA flash attention (`aten._scaled_dot_product_flash_attention`
and its backward) but not through the CPU kernels SDPA dispatches to on CPU
(`aten._scaled_dot_product_flash_attention_for_cpu` and its backward). torchtitan's Qwen3 plan hands the attention
DTensors (its q / k norms need them), so on CPU it stops with "does not have a sharding strategy registered". The
strategies here are the CUDA op's, for the CPU op's signature: all replicated, sharded by heads (what tensor
parallelism gives) or by batch. Attention computes each (batch, head) slice on its own, so any of the three is exact.
Installed by adahop.titan.cpu with the other CPU shims; a no-op where torch already has a strategy.
"""

from __future__ import annotations

import torch

aten = torch.ops.aten


def _placements(tensors: int) -> list:
    """Every tensor (outputs, then inputs) replicated, sharded by heads (dim 1) or by batch (dim 0)."""
    from torch.distributed.tensor import Replicate, Shard

    return [[Replicate()] * tensors, [Shard(1)] * tensors, [Shard(0)] * tensors]


def install_cpu_sdpa_sharding() -> bool:
    """Register the strategies (once). Returns whether it registered them."""
    try:
        from torch.distributed.tensor._api import DTensor
        from torch.distributed.tensor._op_schema import RuntimeSchemaInfo
        from torch.distributed.tensor._ops.utils import expand_to_full_mesh_op_strategy, register_op_strategy
    except ImportError:  # a torch without distributed
        return False
    forward = aten._scaled_dot_product_flash_attention_for_cpu.default
    backward = aten._scaled_dot_product_flash_attention_for_cpu_backward.default
    strategies = DTensor._op_dispatcher.sharding_propagator.op_strategy_funcs
    if forward in strategies:
        return False

    # dropout_p (3) and is_causal (4) change the result, so they are part of the strategy cache key
    @register_op_strategy(forward, schema_info=RuntimeSchemaInfo(3))
    def _forward(op_schema):
        mesh = op_schema.get_mesh_from_args()
        return expand_to_full_mesh_op_strategy(mesh, op_schema, _placements(5), input_index=2)  # out, lse; q, k, v

    @register_op_strategy(backward, schema_info=RuntimeSchemaInfo(6))
    def _backward(op_schema):
        mesh = op_schema.get_mesh_from_args(validate=False)
        return expand_to_full_mesh_op_strategy(
            mesh, op_schema, _placements(9), input_index=3
        )  # dq dk dv; dout q k v out lse

    return True
