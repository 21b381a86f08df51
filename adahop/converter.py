"""The ``quantize.linear.mx`` model converter: nn.Linear -> adahop.linear.AdaHOPLinear.

Registered by adahop.titan in place of upstream's torchao MXFP8 converter of the same name.
It runs on the meta-device model, before parallelization (FSDP wraps the converted modules, which
stay AdaHOPLinear instances). torchtitan calls ``post_optimizer_hook`` once per training step; we use
it to close a calibration step, to fix the plan after the last one, and for the optional
quantization-error metric.
"""

from __future__ import annotations

import weakref
import zlib
from typing import Any

import torch
import torch.nn as nn

from adahop.config import MX_BLOCK, ConfigError, mx_config, resolved_table, validate_mx

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
                "quantize.linear.mx.filter_fqns", list(filter_fqns or []),
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
                    "quantize.linear.mx.enable_mxfp4_gmm", True,
                    f"false, or a model whose expert dims are multiples of {MX_BLOCK}",
                    f"expert stack {fqn}.{name} has shape [experts, out, in] = {list(shape)}; "
                    f"add {fqn!r} to quantize.linear.mx.filter_fqns to keep it in high precision",
                )
        out[fqn] = mod
    if not out:
        raise ConfigError(
            "quantize.linear.mx.enable_mxfp4_gmm", True, "false for a model without MoE experts",
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
            "quantize.linear.mx.enable_mxfp4_fa", True, 'false, or a model with attn_type = "sdpa"',
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
            "quantize.linear.mx.hadamard_size", size,
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

    fast = torch.cuda.is_available() and backend.fast_device(torch.device("cuda"))
    need = tp_multiple(int(mx.hadamard_size), fast)
    for fqn, linear in select_linears(model, list(mx.filter_fqns or [])).items():
        for name in ("in_features", "out_features"):
            dim = getattr(linear, name)
            if dim % (tp * need) != 0:
                raise ConfigError(
                    "parallelism.tensor_parallel_degree", tp,
                    f"a degree that leaves each rank a multiple of {need} of every converted Linear's in/out features",
                    f"{fqn}.{name} = {dim} over {tp} ranks is not a multiple of {need} per rank (MX block, "
                    f"hadamard_size{', GPU fast path 128' if fast else ''}); lower the degree, or add the layer to "
                    "quantize.linear.mx.filter_fqns",
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
            "quantize.linear.mx.filter_fqns", list(filters or []),
            "a list that leaves at least one nn.Linear of the model to convert",
            "it keeps every Linear in high precision; to train them in high precision on purpose, set "
            "quantize.linear.mx.enable_mxfp4_linear = false",
        )
    return targets


def unmatched_filters(model: nn.Module, filter_fqns: list[str]) -> list[str]:
    """The entries of `filter_fqns` found in no fqn of a module the converter could convert (an
    nn.Linear, MoE experts, an attention core): they keep nothing in high precision."""
    from torchtitan.models.moe.moe import GroupedExperts

    fqns = [fqn for fqn, mod in model.named_modules()
            if isinstance(mod, (nn.Linear, GroupedExperts)) or fqn.endswith("inner_attention")]
    return [f for f in filter_fqns or [] if not any(f and f in fqn for fqn in fqns)]


def _set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def active_converters() -> list["AdaHOPConverter"]:
    alive = [r() for r in _INSTANCES]
    return [c for c in alive if c is not None]


class AdaHOPConverter:
    """ModelConverter for ``[model] converters = ["quantize.linear.mx"]``."""

    def __init__(self, job_config, parallel_dims):
        validate_mx(job_config)  # idempotent; adahop.train validated already (model dims too)
        self.job_config = job_config
        self.parallel_dims = parallel_dims
        self.mx = mx_config(job_config)
        self.enabled = bool(self.mx.enable_mxfp4_linear or self.mx.enable_mxfp4_gmm or self.mx.enable_mxfp4_fa)
        self.layers: dict[str, nn.Module] = {}
        self.calibrator = None
        self.qerr = None
        self.trainer = None
        self._hook_calls = 0
        self._bound = False
        _INSTANCES.append(weakref.ref(self))
        from torchtitan.tools.logging import logger

        cal = self.mx.calibration
        if not self.enabled:
            logger.info("[adahop] quantize.linear.mx: enable_mxfp4_linear/gmm/fa all false, no layer converted")
        else:
            logger.info(
                f"[adahop] MXFP4 training ({self.mx.recipe_name}), "
                + (
                    f"plan from {cal.plan_file}" if cal.plan_file
                    else f"calibration over {cal.calibration_steps} steps" if cal.use_HT_calibration
                    else f"uniform mode {self.uniform_mode}"
                )
            )

    @property
    def uniform_mode(self) -> str:
        return "hadamard" if self.mx.use_hadamard else "none"

    def layer_kwargs(self, fqn: str) -> dict[str, Any]:
        m = self.uniform_mode
        return dict(
            forward_y=m, backward_gx=m, backward_gw=m,
            use_sr_grad=bool(self.mx.use_sr_grad),
            randomized_hadamard=bool(self.mx.use_randomized_hadamard),
            hadamard_size=int(self.mx.hadamard_size),
            outlier_k=int(self.mx.outlier_k),
            hadamard_seed=hadamard_seed(fqn),
            tile_b=str(self.mx.kernels.tile_b),
        )

    # ------------------------------------------------------------------ ModelConverter protocol
    def convert(self, model: nn.Module) -> None:
        if not self.enabled:
            return
        from torchtitan.tools.logging import logger

        from adahop.calibration import Calibrator, plan_settings
        from adahop.linear import AdaHOPLinear

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

            for fqn in targets["attention"]:
                _set_submodule(model, fqn, MXFP4Attention(int(self.mx.hadamard_size), bool(self.mx.use_sr_grad)))
        cal = self.mx.calibration
        self.calibrator = Calibrator(
            self.layers,
            table=resolved_table(self.mx),
            uniform_mode=self.uniform_mode,
            calibrate=bool(cal.use_HT_calibration),
            steps=int(cal.calibration_steps),
            threshold=cal.pattern_threshold,
            max_rows=int(cal.max_observed_rows),
            visualize=bool(cal.visualize_outlier_patterns),
            visualization_folder=cal.visualization_save_folder,
            visualization_max_pixels=int(cal.visualization_max_pixels),
            plan_file=cal.plan_file,
            settings=plan_settings(self.mx),
        )
        self.calibrator.dump_folder = self.job_config.job.dump_folder
        if int(self.mx.quant_error_freq) > 0:
            from adahop.metrics import QuantErrorProbe

            self.qerr = QuantErrorProbe(
                self.layers, freq=int(self.mx.quant_error_freq),
                tokens=int(self.mx.quant_error_tokens), layer_kwargs=self.layer_kwargs,
            )
            if len(self.qerr.layers) < len(self.layers):
                logger.info(
                    f"[adahop] quant_error_freq: {len(self.layers) - len(self.qerr.layers)} MoE expert stacks "
                    "are not measured (linears only)"
                )
        self._install_observers()
        logger.info(
            f"[adahop] converted {len(self.layers)} layers to MXFP4 AdaHOP "
            f"(filter_fqns={list(self.mx.filter_fqns)})"
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
        if not self.enabled or self.calibrator is None:
            return
        if not self._bound:
            self.bind(model if isinstance(model, list) else [model])
        self._hook_calls += 1
        step = self.current_step()
        cal = self.calibrator
        if cal.calibrating:
            if cal.end_step():
                cal.publish()
                self._install_observers()
        if self.qerr is not None:
            metrics = self.qerr.end_step(step)
            if metrics and self.trainer is not None:
                mp = getattr(self.trainer, "metrics_processor", None)
                if mp is not None and getattr(mp, "logger", None) is not None:
                    mp.logger.log(metrics, step)

    # ------------------------------------------------------------------ binding to a trainer
    def current_step(self) -> int:
        if self.trainer is not None:
            return int(self.trainer.step)
        return self._hook_calls

    def bind(self, model_parts: list[nn.Module], trainer=None) -> None:
        """Attach to the parallelized model parts (and the trainer, when there is one)."""
        if self.calibrator is None:
            return
        self.trainer = trainer
        self.calibrator.restrict_to(model_parts)
        self.layers = dict(self.calibrator.layers)
        if self.qerr is not None:
            self.qerr.restrict_to(self.layers)
        self.calibrator.dump_folder = self.job_config.job.dump_folder
        self.calibrator.rank, self.calibrator.process_group, self.calibrator.reduce_device = self._comm()
        self._install_observers()
        self._bound = True

    def _comm(self):
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return 0, None, torch.device("cpu")
        rank = dist.get_rank()
        group = None  # default group: every rank agrees on the plan
        pd = self.parallel_dims
        if pd is not None and getattr(pd, "pp_enabled", False):
            # pipeline stages hold different layers: agree within the data-parallel group only
            group = pd.get_mesh("batch").get_group() if pd.dp_enabled else "local"
        backend = str(dist.get_backend()).lower()
        if "nccl" in backend and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return rank, group, device

    def state(self):
        """The Stateful to register in the checkpoint (key "adahop")."""
        from adahop.calibration import PlanState

        return PlanState(self.calibrator, on_load=self._install_observers)

    # ------------------------------------------------------------------ observers
    def _install_observers(self) -> None:
        cal = self.calibrator
        need_cal = cal is not None and cal.calibrating
        need_q = self.qerr is not None
        for i, (fqn, layer) in enumerate(self.layers.items()):
            if not (need_cal or need_q):
                layer.observer = None
                continue
            layer.observer = _Observer(self, i, fqn, layer)


class _Observer:
    """Per-layer observer: feeds calibration (while calibrating) and the quant-error probe."""

    __slots__ = ("conv", "i", "fqn", "layer")

    def __init__(self, conv: AdaHOPConverter, i: int, fqn: str, layer: nn.Module):
        self.conv, self.i, self.fqn, self.layer = conv, i, fqn, layer

    def __call__(self, name: str, t: torch.Tensor) -> None:
        if not self.layer.training:
            return
        if name != "g" and not torch.is_grad_enabled():
            return
        conv = self.conv
        cal = conv.calibrator
        if cal is not None and cal.calibrating:
            cal.observe(self.i, name, t)
        if conv.qerr is not None:
            conv.qerr.observe(self.fqn, name, t, conv.current_step() + (0 if conv.trainer else 1))
