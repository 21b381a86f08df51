"""The AdaHOP model converter (``quantize.linear.mx``, also ``quantize.linear.adahop``: adahop.titan registers
both): nn.Linear -> adahop.linear.AdaHOPLinear, and optionally MoE experts and SDPA attention to MXFP4.

As torchtitan's own converters do, ``convert`` swaps modules and nothing else. It runs on the meta-device
model, before parallelization (FSDP wraps the converted modules, which stay AdaHOP modules). Calibration, the
quantization-error metric and the distributed group are wired by the trainer (adahop.plan_wiring.wire, called by
adahop.train.AdaHOPTrainer); torchtitan calls ``post_optimizer_hook`` once per training step, which hands the
step to that wiring.
"""

from __future__ import annotations

import weakref
import zlib
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from adahop.config import MX_BLOCK, ConfigError, mx_config, validate_mx
from adahop.kernels.state import FastPathState, activate

if TYPE_CHECKING:
    from adahop.plan_wiring import PlanWiring

_INSTANCES: list[weakref.ref] = []


def hadamard_seed(fqn: str) -> int:
    """Seed of a layer's random Hadamard signs: from its fqn, so every rank agrees."""
    return zlib.crc32(fqn.encode()) & 0x7FFFFFFF


def is_filtered(fqn: str, filter_fqns: list[str]) -> bool:
    """Upstream semantics: a module is skipped if any filter string is a substring of its fqn."""
    return any(f and f in fqn for f in filter_fqns or [])


def select_linears(model: nn.Module, filter_fqns: list[str]) -> dict[str, nn.Linear]:
    """The nn.Linear modules to convert, by fqn. Raises ConfigError for a targeted layer whose
    dims are not multiples of 32 (the MX block)."""
    out: dict[str, nn.Linear] = {}
    for fqn, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or is_filtered(fqn, filter_fqns):
            continue
        shape = tuple(mod.weight.shape)
        if shape[0] % MX_BLOCK or shape[1] % MX_BLOCK:
            raise ConfigError(
                "quantize.linear.mx.filter_fqns",
                list(filter_fqns or []),
                f"a list that excludes every Linear whose dims are not multiples of {MX_BLOCK}",
                f"layer {fqn!r} has weight shape [out, in] = {list(shape)}; add {fqn!r} (or a substring "
                f"of it) to quantize.linear.mx.filter_fqns to keep it in high precision",
            )
        out[fqn] = mod
    return out


def select_grouped_experts(model: nn.Module, filter_fqns: list[str]) -> dict[str, nn.Module]:
    """torchtitan MoE expert modules (GroupedExperts) to convert for enable_mxfp4_gmm, by fqn.

    Raises ConfigError when the model has none, or an expert stack's dims are not multiples of 32."""
    from torchtitan.models.moe.moe import GroupedExperts

    out = {}
    for fqn, mod in model.named_modules():
        if not isinstance(mod, GroupedExperts) or is_filtered(fqn, filter_fqns):
            continue
        for name in ("w1", "w2", "w3"):
            shape = tuple(getattr(mod, name).shape)
            if shape[1] % MX_BLOCK or shape[2] % MX_BLOCK:
                raise ConfigError(
                    "quantize.linear.mx.enable_mxfp4_gmm",
                    True,
                    f"false, or a model whose expert dims are multiples of {MX_BLOCK}",
                    f"expert stack {fqn}.{name} has shape [experts, out, in] = {list(shape)}; "
                    f"add {fqn!r} to quantize.linear.mx.filter_fqns to keep it in high precision",
                )
        out[fqn] = mod
    if not out:
        raise ConfigError(
            "quantize.linear.mx.enable_mxfp4_gmm",
            True,
            "false for a model without MoE experts",
            "the model has no torchtitan GroupedExperts module (not filtered) to convert",
        )
    return out


def select_attention(model: nn.Module, filter_fqns: list[str]) -> dict[str, nn.Module]:
    """Attention cores to replace by MXFP4 attention (enable_mxfp4_fa), by fqn.

    Only torchtitan's SDPA wrapper (attn_type = "sdpa") can be replaced; flex / varlen attention
    are refused with a ConfigError, as is a model with no attention core at all."""
    from torchtitan.models.attention import ScaledDotProductAttentionWrapper

    out, other = {}, []
    for fqn, mod in model.named_modules():
        if not fqn.endswith("inner_attention") or is_filtered(fqn, filter_fqns):
            continue
        if isinstance(mod, ScaledDotProductAttentionWrapper):
            out[fqn] = mod
        else:
            other.append(f"{fqn} ({type(mod).__name__})")
    if other or not out:
        raise ConfigError(
            "quantize.linear.mx.enable_mxfp4_fa",
            True,
            'false, or a model with attn_type = "sdpa"',
            "MXFP4 attention replaces torchtitan's SDPA attention only; found "
            + (", ".join(other[:3]) if other else "no attention core"),
        )
    return out


def check_hadamard_dims(model: nn.Module, mx) -> None:
    """A hadamard_size above the MX block (64, 128) must divide the inner dims of every GEMM `mx` converts,
    which the MX block already divides: both dims of a Linear or expert stack, the head_dim of an attention
    core. Raises ConfigError naming hadamard_size (the layers would refuse the dims at their first step)."""
    size = int(mx.hadamard_size)
    if size <= MX_BLOCK:
        return
    dims = {}
    if mx.enable_mxfp4_linear:
        dims.update({fqn: list(lin.weight.shape) for fqn, lin in select_linears(model, mx.filter_fqns).items()})
    if mx.enable_mxfp4_gmm:
        for fqn, experts in select_grouped_experts(model, mx.filter_fqns).items():
            dims.update({f"{fqn}.{w}": list(getattr(experts, w).shape[1:]) for w in ("w1", "w2", "w3")})
    if mx.enable_mxfp4_fa:
        for fqn in select_attention(model, mx.filter_fqns):
            head_dim = getattr(model.get_submodule(fqn.rpartition(".")[0]), "head_dim", None)
            if head_dim is not None:
                dims[f"{fqn} head_dim"] = [int(head_dim)]
    bad = [(fqn, d) for fqn, d in dims.items() if any(n % size for n in d)]
    if bad:
        fqn, d = bad[0]
        raise ConfigError(
            "quantize.linear.mx.hadamard_size",
            size,
            f"a size that divides every converted GEMM's dims ({MX_BLOCK} or less always does)",
            f"{len(bad)} converted modules have a dim that {size} does not divide, e.g. {fqn!r} with dims {d}",
        )


def check_tp_dims(model: nn.Module, mx, tp: int) -> None:
    """Under tensor parallelism (degree `tp`) torchtitan shards each Linear along out_features (colwise) or
    in_features (rowwise); an AdaHOP layer quantizes its shard on its own (adahop.linear._apply_sharded), so each
    rank's part of either dim must hold whole MX and Hadamard blocks (and 128-groups where the GPU fast path
    runs). Raises ConfigError naming the first converted Linear that does not."""
    if tp <= 1 or not mx.enable_mxfp4_linear:
        return
    import torch

    from adahop import backend
    from adahop.linear import tp_multiple

    fast = not mx.kernels.reference_only and torch.cuda.is_available() and backend.fast_device(torch.device("cuda"))
    need = tp_multiple(int(mx.hadamard_size), fast)
    for fqn, linear in select_linears(model, list(mx.filter_fqns or [])).items():
        for name in ("in_features", "out_features"):
            dim = getattr(linear, name)
            if dim % (tp * need) != 0:
                raise ConfigError(
                    "parallelism.tensor_parallel_degree",
                    tp,
                    f"a degree that leaves each rank a multiple of {need} of every converted Linear's in/out features",
                    f"{fqn}.{name} = {dim} over {tp} ranks is not a multiple of {need} per rank (MX block, "
                    f"hadamard_size{', GPU fast path 128' if fast else ''}); lower the degree, or add the layer to "
                    "quantize.linear.mx.filter_fqns",
                )
    # torchtitan splits attention by heads: a degree that does not divide the (kv) head counts fails in the
    # first step's reshape, after everything was built
    for fqn, module in model.named_modules():
        for attr in ("n_heads", "n_kv_heads"):
            heads = getattr(module, attr, None)
            if isinstance(heads, int) and heads % tp != 0:
                raise ConfigError(
                    "parallelism.tensor_parallel_degree",
                    tp,
                    f"a divisor of every attention's {attr}",
                    f"{fqn or 'the model'}.{attr} = {heads} cannot be split over {tp} ranks; lower the degree",
                )


def select_targets(model: nn.Module, mx) -> dict[str, dict[str, nn.Module]]:
    """The modules the converter replaces, by kind ("linear", "experts", "attention") and fqn, for the
    kinds `mx` ([quantize.linear.mx]) enables. An enabled kind of which nothing would be converted is a
    ConfigError: the run would train in high precision while the config says MXFP4."""
    filters = mx.filter_fqns
    targets = {
        "linear": select_linears(model, filters) if mx.enable_mxfp4_linear else {},
        "experts": select_grouped_experts(model, filters) if mx.enable_mxfp4_gmm else {},
        "attention": select_attention(model, filters) if mx.enable_mxfp4_fa else {},
    }
    if mx.enable_mxfp4_linear and not targets["linear"]:
        raise ConfigError(
            "quantize.linear.mx.filter_fqns",
            list(filters or []),
            "a list that leaves at least one nn.Linear of the model to convert",
            "it keeps every Linear in high precision; to train them in high precision on purpose, set "
            "quantize.linear.mx.enable_mxfp4_linear = false",
        )
    return targets


def unmatched_filters(model: nn.Module, filter_fqns: list[str]) -> list[str]:
    """The entries of `filter_fqns` found in no fqn of a module the converter could convert (an
    nn.Linear, MoE experts, an attention core): they keep nothing in high precision."""
    from torchtitan.models.moe.moe import GroupedExperts

    fqns = [
        fqn
        for fqn, mod in model.named_modules()
        if isinstance(mod, (nn.Linear, GroupedExperts)) or fqn.endswith("inner_attention")
    ]
    return [f for f in filter_fqns or [] if not any(f and f in fqn for fqn in fqns)]


def _set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def active_converters() -> list["AdaHOPConverter"]:
    alive = [r() for r in _INSTANCES]
    return [c for c in alive if c is not None]


class AdaHOPConverter:
    """ModelConverter for ``[model] converters = ["quantize.linear.mx"]`` (or ``"quantize.linear.adahop"``)."""

    def __init__(self, job_config, parallel_dims):
        validate_mx(job_config)  # idempotent; adahop.train validated already (model dims too)
        self.job_config = job_config
        self.parallel_dims = parallel_dims
        self.mx = mx_config(job_config)
        self.enabled = bool(self.mx.enable_mxfp4_linear or self.mx.enable_mxfp4_gmm or self.mx.enable_mxfp4_fa)
        self.layers: dict[str, nn.Module] = {}  # the converted AdaHOP layers (linears, expert stacks) by fqn
        self.converted = False  # convert() ran (and enabled converts something)
        self.wiring: PlanWiring | None = None  # set by adahop.plan_wiring.wire
        # what the GPU fast path keeps between calls for this job's layers: active from convert() on
        self.fast_path = FastPathState(force_reference=bool(self.mx.kernels.reference_only))
        _INSTANCES.append(weakref.ref(self))
        from torchtitan.tools.logging import logger

        cal = self.mx.calibration
        if not self.enabled:
            logger.info("[adahop] quantize.linear.mx: enable_mxfp4_linear/gmm/fa all false, no layer converted")
        else:
            logger.info(
                f"[adahop] MXFP4 training ({self.mx.recipe_name}), "
                + (
                    f"plan from {cal.plan_file}"
                    if cal.plan_file
                    else f"calibration over {cal.calibration_steps} steps"
                    if cal.use_HT_calibration
                    else f"uniform mode {self.uniform_mode}"
                )
            )

    @property
    def uniform_mode(self) -> str:
        return "hadamard" if self.mx.use_hadamard else "none"

    @property
    def calibrator(self):
        """The wiring's Calibrator (None until wired)."""
        return self.wiring.calibrator if self.wiring is not None else None

    @property
    def qerr(self):
        """The wiring's QuantErrorProbe (None until wired, or without quant_error_freq)."""
        return self.wiring.qerr if self.wiring is not None else None

    def layer_kwargs(self, fqn: str) -> dict[str, Any]:
        m = self.uniform_mode
        return dict(
            forward_y=m,
            backward_gx=m,
            backward_gw=m,
            use_sr_grad=bool(self.mx.use_sr_grad),
            randomized_hadamard=bool(self.mx.use_randomized_hadamard),
            hadamard_size=int(self.mx.hadamard_size),
            outlier_k=int(self.mx.outlier_k),
            hadamard_seed=hadamard_seed(fqn),
            tile_b=str(self.mx.kernels.tile_b),
        )

    # ------------------------------------------------------------------ ModelConverter protocol
    def convert(self, model: nn.Module) -> None:
        """Swap the targeted modules for AdaHOP ones, every slot in the uniform mode; nothing else."""
        if not self.enabled:
            return
        from torchtitan.tools.logging import logger

        from adahop.linear import AdaHOPLinear

        activate(self.fast_path)
        targets = select_targets(model, self.mx)
        for entry in unmatched_filters(model, self.mx.filter_fqns):
            logger.warning(
                f"[adahop] quantize.linear.mx.filter_fqns entry {entry!r} matches no Linear, MoE expert or "
                "attention module of the model: it keeps nothing in high precision"
            )
        for fqn, lin in targets["linear"].items():
            new = AdaHOPLinear.from_linear(lin, **self.layer_kwargs(fqn))
            _set_submodule(model, fqn, new)
            self.layers[fqn] = new
        self._convert_experts(targets["experts"])
        if targets["attention"]:
            from adahop.attention import MXFP4Attention

            att = self.mx.attention
            for fqn in targets["attention"]:
                core = MXFP4Attention(
                    int(self.mx.hadamard_size),
                    self.mx.use_sr_grad,
                    smooth_keys=att.smooth_keys,
                    quantize_dp=att.quantize_dp,
                )
                _set_submodule(model, fqn, core)
        self.converted = True
        logger.info(
            f"[adahop] converted {len(self.layers)} layers to MXFP4 AdaHOP (filter_fqns={list(self.mx.filter_fqns)})"
        )

    def _convert_experts(self, targets: dict[str, nn.Module]) -> None:
        """MoE experts: each stack (w1, w2, w3) becomes an AdaHOP layer of the plan, "<fqn>.mx_w1" etc."""
        from adahop.linear import LinearRecipe
        from adahop.moe import EXPERT_WEIGHTS, AdaHOPGroupedExperts

        for fqn, experts in targets.items():
            recipes = {w: LinearRecipe(**self.layer_kwargs(f"{fqn}.mx_{w}")) for w in EXPERT_WEIGHTS}
            AdaHOPGroupedExperts.from_experts(experts, recipes)
            for w, layer in experts.grouped_layers().items():
                self.layers[f"{fqn}.mx_{w}"] = layer

    def post_optimizer_hook(self, model: nn.Module | list[nn.Module]) -> None:
        """torchtitan calls it after every optimizer step: the wiring's step upkeep (adahop.plan_wiring)."""
        if not self.converted:
            return
        if self.wiring is None:
            # torchtitan's own Trainer wires nothing (--experimental.custom_import adahop.titan): wire now. The step
            # that just ran was not observed, so it closes no calibration step; calibration and the metric start
            # with the next one.
            from adahop.plan_wiring import wire

            wire(self, model if isinstance(model, list) else [model]).hook_calls = 1
            return
        self.wiring.end_step()
