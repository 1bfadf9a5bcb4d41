"""Run a ``transformers`` model's attention through HDP::

    import hdp, hdp.transformers
    hdp.transformers.register(config=hdp.Config(top_p=0.9))
    model = AutoModel.from_pretrained(path, attn_implementation="hdp").eval()
    with torch.no_grad(), hdp.trace() as t:
        model(**inputs)
    print(t.summary()["block_sparsity"], hdp.simulate(t, preset="edge")["speedup_vs_dense"])

``register`` adds an attention function to transformers' ``AttentionInterface`` (and the mask
function SDPA uses to ``AttentionMaskInterface``, so padding masks reach it) under ``name``.
Models whose attention goes through that interface (BERT, RoBERTa, Llama-style decoders, ...)
then run self-attention with HDP; each module's ``layer_idx`` is the layer recorded in the
trace. What HDP cannot honour raises an error (dropout in training, position biases, softcap,
KV caches with more keys than queries), see :func:`hdp.torch.sdpa`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

import hdp as _hdp
from hdp.torch import sdpa

__all__ = ["register"]


def register(name: str = "hdp", config: Optional[_hdp.Config] = None) -> str:
    """Registers HDP attention with ``config`` (default: the library default) as
    ``attn_implementation=name``; returns ``name``. Registering again under the same name
    replaces the configuration."""
    from transformers import AttentionInterface

    try:
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:  # pragma: no cover - transformers too old
        raise ImportError(
            "hdp.transformers needs transformers>=4.48 (AttentionInterface and AttentionMaskInterface)"
        ) from e

    def hdp_attention_forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        dropout: float = 0.0,
        scaling: Optional[float] = None,
        is_causal: Optional[bool] = None,
        position_bias: Optional[torch.Tensor] = None,
        **kwargs: Any,
    ) -> Tuple[torch.Tensor, None]:
        if kwargs.get("softcap") is not None:
            raise ValueError("hdp attention does not support softcap")
        if position_bias is not None:
            raise ValueError("hdp attention does not support additive position biases")
        if kwargs.get("output_attentions", False):
            raise ValueError(
                "hdp attention does not return attention weights (output_attentions=True)"
            )
        q_length = query.shape[2]
        causal = getattr(module, "is_causal", False) if is_causal is None else is_causal
        causal = bool(q_length > 1 and attention_mask is None and causal)
        if attention_mask is not None:
            attention_mask = attention_mask[:, :, :, : key.shape[-2]]
        out = sdpa(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=dropout,
            is_causal=causal,
            scale=scaling,
            enable_gqa=True,
            config=config,
            layer=int(getattr(module, "layer_idx", 0) or 0),
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(name, hdp_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name
