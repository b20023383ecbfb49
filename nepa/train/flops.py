"""FLOP counting for training steps: torch's ``FlopCounterMode``, taught the CPU attention kernel.

``FlopCounterMode`` counts matrix multiplies, convolutions and the CUDA attention kernels, but
on CPU ``scaled_dot_product_attention`` runs ``_scaled_dot_product_flash_attention_for_cpu``,
which torch has no formula for: attention would count as free. Importing this module registers
torch's own SDPA formulas for that kernel and its backward, so counts agree across devices.
"""

from __future__ import annotations

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

__all__ = ["FlopCounterMode"]

_aten = torch.ops.aten
_CPU_SDPA = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CPU_SDPA_BWD = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

if _CPU_SDPA is not None and _CPU_SDPA.default not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


if _CPU_SDPA_BWD is not None and _CPU_SDPA_BWD.default not in flop_counter.flop_registry:

    @flop_counter.register_flop_formula(_CPU_SDPA_BWD)
    def _cpu_sdpa_backward(
        grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
    ) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)
