"""Opt-in per-layer quantization error (``[quantize.linear.mx] quant_error_freq = N``).

Every N steps, each converted layer's observer keeps a sample of its operands from that step:
the first ``quant_error_tokens`` rows of x and of g = dL/dy (the same tokens), and W. After the
optimizer step the three GEMMs are re-run on the sample, once through adahop's MXFP4 path with the
layer's current modes (``adahop.linear.mxfp4_linear`` forward + backward) and once in float32:

    rel_err(slot) = ||C_mxfp4 - C_fp32||_F / ||C_fp32||_F

forward_y uses the whole W; the two backward GEMMs use the first ``QERR_COLUMNS`` input features of
W and x (a column subset keeps their inner dimension whole and bounds the memory kept on the step).
Logged through torchtitan's metric logger (TensorBoard / W&B switches) as
``adahop_qerr/<slot>/<layer fqn>`` and the mean over layers ``adahop_qerr/<slot>/mean``.
"""

from __future__ import annotations

from typing import Callable

import torch

from adahop.modes import SLOTS

QERR_COLUMNS = 512


def rel_err(q: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.float()
    den = ref.norm()
    return float((q.float() - ref).norm() / den) if den > 0 else float((q.float() - ref).norm())


class QuantErrorProbe:
    def __init__(self, layers: dict, *, freq: int, tokens: int, layer_kwargs: Callable[[str], dict]):
        self.layers = _linears(layers)
        self.freq = int(freq)
        self.tokens = int(tokens)
        self.layer_kwargs = layer_kwargs
        self._samples: dict[str, dict[str, torch.Tensor]] = {}
        self._fwd: dict[str, float] = {}

    def restrict_to(self, layers: dict) -> None:
        self.layers = _linears(layers)

    def due(self, step: int) -> bool:
        return self.freq > 0 and step > 0 and step % self.freq == 0

    def _kwargs(self, fqn: str) -> dict:
        kw = dict(self.layer_kwargs(fqn))
        kw.update(self.layers[fqn].modes)
        return kw

    def observe(self, fqn: str, name: str, t: torch.Tensor, step: int) -> None:
        if not self.due(step) or fqn not in self.layers:
            return
        s = self._samples.setdefault(fqn, {})
        if name in s:  # first observation of the step wins (recomputation, microbatches)
            return
        if name == "x":
            s["x"] = t[: self.tokens].detach().clone()
        elif name == "w" and "x" in s:
            w = t.detach()
            x = s["x"]
            from adahop.linear import mxfp4_linear

            with torch.no_grad():
                y_q = mxfp4_linear(x, w, **self._kwargs(fqn))
                y = x.float() @ w.float().t()
            self._fwd[fqn] = rel_err(y_q, y)
            cols = min(QERR_COLUMNS, w.shape[1])
            s["w"] = w[:, :cols].clone()
            s["x"] = x[:, :cols].contiguous()
        elif name == "g" and "w" in s:
            s["g"] = t[: self.tokens].detach().clone()

    def end_step(self, step: int) -> dict[str, float]:
        if not self._samples:
            return {}
        from adahop.linear import mxfp4_linear

        metrics: dict[str, float] = {}
        sums = {slot: [] for slot in SLOTS}
        for fqn, s in self._samples.items():
            if fqn in self._fwd:
                metrics[f"adahop_qerr/forward_y/{fqn}"] = self._fwd[fqn]
                sums["forward_y"].append(self._fwd[fqn])
            if not all(k in s for k in ("x", "w", "g")):
                continue
            x, w, g = s["x"], s["w"], s["g"]
            n = min(x.shape[0], g.shape[0])
            x, g = x[:n], g[:n]
            with torch.enable_grad():
                xq = x.detach().clone().requires_grad_(True)
                wq = w.detach().clone().requires_grad_(True)
                y = mxfp4_linear(xq, wq, **self._kwargs(fqn))
                y.backward(g.to(y.dtype))
            gx_ref = g.float() @ w.float()
            gw_ref = g.float().t() @ x.float()
            for slot, q, ref in (("backward_gx", xq.grad, gx_ref), ("backward_gw", wq.grad, gw_ref)):
                e = rel_err(q, ref)
                metrics[f"adahop_qerr/{slot}/{fqn}"] = e
                sums[slot].append(e)
        for slot, vals in sums.items():
            if vals:
                metrics[f"adahop_qerr/{slot}/mean"] = sum(vals) / len(vals)
        self._samples.clear()
        self._fwd.clear()
        return metrics


def _linears(layers: dict) -> dict:
    """The probe measures AdaHOPLinear layers only: an MoE expert stack's g is per routed token of one
    expert's output width, so its three GEMMs need the group sizes (converter logs which are left out)."""
    from adahop.linear import AdaHOPLinear

    return {f: m for f, m in layers.items() if isinstance(m, AdaHOPLinear)}
