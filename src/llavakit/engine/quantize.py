"""Quantized linear layers for the language model: int8 on the CPU, bitsandbytes on CUDA.

CPU "int8": per-output-channel int8 weights through PyTorch's dynamic-quantization kernels
(fbgemm/onednn; activations are quantized per call). On this project's 2-core benchmark machine
it was the fastest choice measured: a 32000x640 head at batch 1 took 0.47 ms against 1.6 ms in
fp32 and 0.65 ms for weight-only `_weight_int8pack_mm` with bf16 activations (which is much
slower with fp32 ones). Where torch.ao is missing, a plain weight-only Int8Linear (dequantize,
then matmul) keeps the option working, more slowly.

CUDA "int8" / "nf4" / "fp4": bitsandbytes' Linear8bitLt / Linear4bit, imported only when asked.
The vision tower and the projector stay in full precision: they run once per image.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

METHODS = ("int8", "nf4", "fp4")


class QuantizationError(ValueError):
    """The requested quantization is not available here (wrong device, missing package)."""


class Int8Linear(nn.Module):
    """A Linear with int8 weights and one fp32 scale per output channel.

    `weight` is kept as a zero-size tensor of the compute dtype so that code asking a layer for
    its dtype and device (LlavaModel.dtype reads lm_head.weight) still gets the right answer.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.new_empty(0))
        self.inner = _dynamic_int8(linear)
        if self.inner is None:  # fallback: weight-only int8, dequantized per call
            w = linear.weight.detach().float()
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
            self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale)
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inner is not None:
            return self.inner(x)
        out = torch.nn.functional.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return out if self.bias is None else out + self.bias.to(x.dtype)


def _dynamic_int8(linear: nn.Linear) -> nn.Module | None:
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice; the kernels are what we want
        wrapped = nn.Sequential(nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None))
        wrapped[0].load_state_dict({k: v.detach().float() for k, v in linear.state_dict().items()})
        return quantize_dynamic(wrapped, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)[0]


def _language_linears(model) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every Linear of the decoder, plus the output head."""
    lm = model.language_model
    found = [(parent, name, child) for parent in lm.model.layers.modules()
             for name, child in parent.named_children() if isinstance(child, nn.Linear)]
    return [*found, (lm, "lm_head", lm.lm_head)]


def quantize_model(model, method: str) -> None:
    """Replace the language model's linear layers in place (see the module docstring)."""
    if method not in METHODS:
        raise QuantizationError(f"unknown quantization {method!r}; use one of {', '.join(METHODS)}")
    device = model.device
    if device.type == "cpu":
        if method != "int8":
            raise QuantizationError(f"{method} needs bitsandbytes on a CUDA device; on the CPU use int8")
        if model.dtype != torch.float32:
            raise QuantizationError("int8 on the CPU computes with fp32 activations; load the model with dtype fp32")
        for parent, name, linear in _language_linears(model):
            setattr(parent, name, Int8Linear(linear))
        return
    if device.type != "cuda":
        raise QuantizationError(f"quantization is supported on cpu (int8) and cuda (bitsandbytes), not {device.type}")
    _bitsandbytes(model, method)


def _bitsandbytes(model, method: str) -> None:
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise QuantizationError(
            f"{method} on CUDA needs the bitsandbytes package (pip install bitsandbytes): {err}"
        ) from None
    device = model.device
    compute_dtype = model.dtype
    # The head stays in full precision: it is precision-sensitive, and LlavaModel reads its dtype.
    for parent, name, linear in _language_linears(model)[:-1]:
        weight = linear.weight.detach().to("cpu", torch.float16)
        has_bias = linear.bias is not None
        if method == "int8":
            new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                      has_fp16_weights=False, threshold=6.0)
            new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        else:
            new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias,
                                    compute_dtype=compute_dtype, quant_type=method)
            new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=method)
        if has_bias:
            new.bias = nn.Parameter(linear.bias.detach().to(device, compute_dtype), requires_grad=False)
        setattr(parent, name, new.to(device))  # moving to CUDA is what quantizes the weights
