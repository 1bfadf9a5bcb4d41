"""HDP attention with the signature of ``torch.nn.functional.scaled_dot_product_attention``.

``hdp.torch.sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
enable_gqa=False, *, config=None)`` takes CPU float32 tensors ``[batch, heads, N, d]`` (or
``[heads, N, d]``) of self-attention (as many queries as keys) and returns a tensor that shares
its memory with the kernel's output (no copy). What it cannot honour raises an error, it is
never ignored: dropout, tensors off the CPU or not float32, gradients (there is no backward),
attention masks other than key padding (optionally with causal), additive biases.

Masks: a boolean ``attn_mask`` (True = take part) or an additive float mask of zeros and very
negative values (``-inf`` or ``torch.finfo(dtype).min``, what ``transformers`` builds), of any
shape that broadcasts to ``[batch, heads, N, N]``, as long as it is the same for every head and
every query (key padding), or key padding combined with a causal mask. hdp masks padded
tokens as queries too: their output rows are zero, where SDPA would attend the valid keys;
those rows never reach a valid position downstream.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch

import hdp as _hdp

__all__ = ["sdpa", "scaled_dot_product_attention"]


def _key_padding(mask: torch.Tensor, b: int, h: int, n: int) -> Tuple[Optional[torch.Tensor], bool]:
    """(key mask [b, n] or None when every key is valid, causal) from an SDPA mask, or an error."""
    if mask.dtype == torch.bool:
        allowed = mask
    elif mask.is_floating_point():
        finite_min = torch.finfo(mask.dtype).min
        blocked = mask <= finite_min / 2
        if not torch.all((mask == 0) | blocked):
            raise ValueError(
                "hdp.torch.sdpa takes additive masks of zeros and -inf (or the dtype's minimum) "
                "only; additive biases (ALiBi, relative positions) are not supported"
            )
        allowed = ~blocked
    else:
        raise TypeError(f"attn_mask must be bool or floating point, got {mask.dtype}")
    try:
        allowed = torch.broadcast_to(allowed, (b, h, n, n))
    except RuntimeError as e:
        raise ValueError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to [batch, heads, N, N] = "
            f"{[b, h, n, n]}"
        ) from e
    keys = allowed[:, :1, -1:, :]  # the last query sees every valid key, causal or not
    if torch.equal(allowed, keys.expand(b, h, n, n)):
        causal = False
    else:
        tril = torch.ones(n, n, dtype=torch.bool).tril()
        if torch.equal(allowed, (keys & tril).expand(b, h, n, n)):
            causal = True
        else:
            raise ValueError(
                "hdp.torch.sdpa takes key-padding masks (the same for every head and query), "
                "optionally combined with a causal mask; this attn_mask is neither"
            )
    key_mask = keys[:, 0, 0, :]
    if bool(key_mask.all()):
        return None, causal
    if not bool(key_mask.any(dim=1).all()):
        raise ValueError("attn_mask masks every key of some sequence: its softmax is undefined")
    return key_mask, causal


def sdpa(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    config: Optional[_hdp.Config] = None,
    layer: int = 0,
    isa: Optional[str] = None,
) -> torch.Tensor:
    """HDP attention in place of ``torch.nn.functional.scaled_dot_product_attention``.

    ``config``: an :class:`hdp.Config`; ``layer``: the layer index recorded in the trace
    (:func:`hdp.trace`). Returns a float32 tensor of the query's shape (value's last dimension).
    """
    tensors = {"query": query, "key": key, "value": value}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"hdp runs on the CPU; {name} is on {t.device} (move it with .cpu())")
        if t.dtype != torch.float32:
            raise TypeError(f"hdp.torch.sdpa takes float32 tensors; {name} is {t.dtype}")
    if dropout_p != 0.0:
        raise ValueError(
            f"dropout_p={dropout_p}: hdp has no attention dropout (inference only); pass 0.0 "
            "(model.eval())"
        )
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors.values()):
        raise ValueError(
            "hdp attention has no backward pass; run under torch.no_grad() or torch.inference_mode()"
        )
    if is_causal and attn_mask is not None:
        raise ValueError("give attn_mask or is_causal, not both (as torch's SDPA requires)")
    squeeze = query.dim() == 3
    if squeeze:
        query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(
            "hdp.torch.sdpa takes [batch, heads, N, d] (or [heads, N, d]) tensors, got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    b, hq, n, d = query.shape
    if key.shape[2] != n or value.shape[2] != n:
        raise ValueError(
            f"hdp attention is self-attention over one sequence: {n} queries but "
            f"{key.shape[2]} keys (cross-attention and KV caches are not supported)"
        )
    if value.shape[-1] != d or key.shape[-1] != d:
        raise ValueError(
            f"query, key and value must share the head dimension, got {d}, {key.shape[-1]}, "
            f"{value.shape[-1]}"
        )
    hk = key.shape[1]
    if hk != hq or value.shape[1] != hq:
        if not enable_gqa:
            raise ValueError(
                f"{hq} query heads but {hk} key heads: pass enable_gqa=True for grouped-query attention"
            )
        if hq % hk or value.shape[1] != hk:
            raise ValueError(f"{hq} query heads are not a multiple of {hk} key/value heads")
        key = key.repeat_interleave(hq // hk, dim=1)
        value = value.repeat_interleave(hq // hk, dim=1)
    if scale is not None and scale != 1.0 / math.sqrt(d):
        # hdp applies 1/sqrt(d) to the scores: fold the requested scale into Q.
        query = query * (scale * math.sqrt(d))
    mask = None
    causal = is_causal
    if attn_mask is not None:
        key_mask, causal = _key_padding(attn_mask, b, hq, n)
        mask = None if key_mask is None else key_mask.numpy()
    with torch.no_grad():
        out, _stats = _hdp.attention(
            query.detach().numpy(),
            key.detach().numpy(),
            value.detach().numpy(),
            mask=mask,
            causal=causal,
            config=config,
            layer=layer,
            isa=isa,
        )
    t = torch.from_numpy(out)
    return t.squeeze(0) if squeeze else t


#: The same function under torch's name.
scaled_dot_product_attention = sdpa
