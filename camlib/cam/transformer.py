"""Methods that read a vision transformer's attention: LeGrad (torch-cam 0.5.0's, on torchvision's ViT).

Token layers ``(B, N, C)`` are explained by every other family too, read as ``(B, C, h, w)`` feature maps
(``camlib.layouts``); the methods here need the attention itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from camlib.cam.registry import LayerEvidence, family_decorator
from camlib.cam.result import _upcast
from camlib.errors import MethodError
from camlib.guard import owned_by_this_thread
from camlib.layouts import Layout
from camlib.targets import target_scores

activation_method = family_decorator("activation")


@activation_method(
    "legrad",
    label="LeGrad (ViT)",
    paper="Bousselham et al., 2024, arXiv:2404.03214",
    cost="1 forward + 1 forward and backward per layer (its own pass, with attention hooks)",
    refuse=lambda model, module, layout: _legrad_refusal(model, module, layout),
)
def _legrad(e: LayerEvidence) -> torch.Tensor:
    """LeGrad: ``mean_{heads, queries} relu(d s_k / d P)`` over the patch keys, ``P`` the block's post-softmax
    attention probabilities ``(B, heads, N, N)`` and ``s_k`` the target's score of the class scores read from the
    block's own output, ``heads(ln(mean_tokens(block output)))`` (Bousselham et al. 2024), as torch-cam 0.5.0's
    ``LeGrad`` on a torchvision ``VisionTransformer``: leading (class) keys dropped, the rest on the patch grid.
    Attention values are not multiplied in. camlib returns each block's map (torch-cam averages the blocks of one call).

    The layer must be a transformer block that outputs tokens and has an ``nn.MultiheadAttention`` child (torchvision
    ViT's ``encoder.layers.encoder_layer_K``); the model must have ``encoder.ln`` and ``heads`` (the score
    projection). Its own forward runs with this thread's hooks that ask the attention for per-head weights and
    recompute its output from them, so the gradient reaches them; then one ``torch.autograd.grad``.

    Raises ``MethodError`` for any other layer or model (a CNN feature map, timm's fused attention)."""
    reason = _legrad_refusal(e.model, e.module, e.layout)
    if reason is not None:
        raise MethodError(reason)
    attention = _block_attention(e.module)
    mine, store = owned_by_this_thread(), {}

    def ask_weights(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return (args, {**kwargs, "need_weights": True, "average_attn_weights": False}) if mine() else None

    def replay(module: nn.MultiheadAttention, args: tuple, _kwargs: dict, output: tuple) -> tuple | None:
        if not mine():
            return None
        probs, value = output[1], args[2]
        batch, length, dim = value.shape
        bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * dim :]
        value = F.linear(value, module.in_proj_weight[2 * dim :], bias)
        value = value.reshape(batch, length, module.num_heads, dim // module.num_heads).transpose(1, 2)
        merged = torch.matmul(probs, value).transpose(1, 2).reshape(batch, probs.shape[-2], dim)
        store["probs"] = probs
        return module.out_proj(merged), None

    def score(_m: nn.Module, _i: object, output: torch.Tensor) -> None:
        if mine():
            store["logits"] = e.model.heads(e.model.encoder.ln(output.mean(dim=1)))

    handles = [
        attention.register_forward_pre_hook(ask_weights, with_kwargs=True),
        attention.register_forward_hook(replay, with_kwargs=True),
        e.module.register_forward_hook(score),
    ]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            e.model(e.x.detach().clone().requires_grad_(True))
            logits = store["logits"]
            selected = target_scores(e.targets, logits)
            (grad,) = torch.autograd.grad(selected.sum(), store["probs"])
    finally:
        for handle in handles:
            handle.remove()
    relevance = torch.relu(_upcast(grad)).mean(dim=(1, 2))[:, e.layout.prefix_tokens :]
    return relevance.reshape(len(relevance), e.layout.height, e.layout.width).detach()


def _block_attention(module: nn.Module | None) -> nn.MultiheadAttention | None:
    """A transformer block's self-attention: its ``self_attention`` child, else its only ``nn.MultiheadAttention``
    child."""
    if module is None:
        return None
    named = getattr(module, "self_attention", None)
    if isinstance(named, nn.MultiheadAttention):
        return named
    children = [child for child in module.children() if isinstance(child, nn.MultiheadAttention)]
    return children[0] if len(children) == 1 else None


def _legrad_refusal(model: nn.Module, module: nn.Module | None, layout: Layout | None) -> str | None:
    """Why LeGrad cannot explain this layer of this model, or None where it can."""
    if layout is not None and layout.kind != "tokens":
        return (
            "LeGrad explains vision-transformer blocks, whose output is tokens; this layer outputs a "
            f"{layout.label} feature map: use Grad-CAM or another CAM on it"
        )
    attention = _block_attention(module)
    if attention is None:
        return (
            "LeGrad needs a transformer block with an nn.MultiheadAttention child (torchvision ViT's "
            "encoder.layers.encoder_layer_K); pick such a block"
        )
    if not attention.batch_first or attention.in_proj_weight is None or attention.bias_k is not None:
        return "LeGrad needs batch-first self-attention with packed Q/K/V projections and no added key/value tokens"
    encoder = getattr(model, "encoder", None)
    if not isinstance(getattr(encoder, "ln", None), nn.Module) or not isinstance(
        getattr(model, "heads", None), nn.Module
    ):
        return "LeGrad reads each block's class scores through the model's encoder.ln and heads (a torchvision ViT)"
    return None
