"""Route a PEFT LoRA model's training forward through the fused kernels, keeping PEFT's modules and names.

:func:`install_fused_lora` groups the adapted ``lora.Linear`` modules that read the same input (q/k/v and
gate/up inside one decoder layer; every other module alone), stacks each group's frozen base weights into one
augmented weight (the modules' ``base_layer.weight`` become views of it, so nothing is duplicated), and swaps
each module's class for a subclass whose forward sends training calls to its group. The parameters stay
PEFT's own ``lora_A`` / ``lora_B`` tensors, so optimizer state, checkpoints, ``save_pretrained`` (the adapter
in PEFT format) and everything downstream are unchanged. PEFT's own forward still serves every other call:
no gradient (evaluation, generation), merged or disabled adapters, mixed-adapter batches, extra arguments.

A group computes all its modules' outputs when the first of them is called and hands the others theirs when
they are called with the same input tensor (the attention and MLP code call q, k, v and gate, up in turn on
one tensor); the hand-over is plain attribute state that torch.compile traces through.

Dropout seeds: one int64 per module, drawn from torch's default generator of the model's device at the start
of every training forward (a pre-hook on the decoder stack), so masks follow ``torch.manual_seed`` exactly as
PEFT's dropout does, and the loop's per-micro-batch seeding (train/loop.py) keeps runs resumable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from lorascope.train.fused_lora.ops import BACKENDS, EXPANDS, LoraGroupFunction

log = logging.getLogger(__name__)

SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
ADAPTER = "default"


def default_blocks() -> tuple[int, ...]:
    from lorascope.train.fused_lora.kernels import Blocks

    return tuple(Blocks().as_list())


@dataclass(frozen=True)
class FusedSettings:
    backend: str = "triton"  # "torch": the PyTorch reference (CPU tests)
    expand: str = "kaug"
    blocks: tuple[int, ...] | None = None  # kernels.Blocks().as_list(); None = defaults

    def __post_init__(self):
        if self.backend not in BACKENDS or self.expand not in EXPANDS:
            raise ValueError(f"backend must be in {BACKENDS}, expand in {EXPANDS}: {self}")


def _lora_dropout_p(module) -> float:
    drop = module.lora_dropout[ADAPTER]
    return float(drop.p) if isinstance(drop, nn.Dropout) else 0.0


def _eligible(module) -> bool:
    """A plain LoRA adapter named ``default`` on a bias-free nn.Linear (what lorascope's apply_lora builds)."""
    return (ADAPTER in module.lora_A and not getattr(module, "lora_variant", {}).get(ADAPTER)
            and not module.use_dora.get(ADAPTER, False) and not getattr(module, "lora_bias", {}).get(ADAPTER, False)
            and isinstance(module.base_layer, nn.Linear) and module.base_layer.bias is None
            and not module.base_layer.weight.requires_grad)


def _signature(module) -> tuple:
    w = module.base_layer.weight
    return (w.shape[1], module.r[ADAPTER], float(module.scaling[ADAPTER]), _lora_dropout_p(module), w.device)


class LoraGroup(nn.Module):
    """1–3 adapted modules reading one input; owns their augmented weight and the hand-over state."""

    def __init__(self, members: list[nn.Module], seeds: torch.Tensor, settings: FusedSettings):
        super().__init__()
        in_features, r, scaling, p, device = _signature(members[0])
        from lorascope.train.fused_lora.kernels import padded_rank

        width = padded_rank(len(members), r)
        dtype = torch.bfloat16 if settings.backend == "triton" else members[0].base_layer.weight.dtype
        weights = [m.base_layer.weight for m in members]
        w_aug = torch.zeros(sum(w.shape[0] for w in weights), in_features + width, dtype=dtype, device=device)
        row = 0
        for m, w in zip(members, weights):
            w_aug[row:row + w.shape[0], :in_features] = w.detach()
            m.base_layer.weight.data = w_aug[row:row + w.shape[0], :in_features]  # a view: no second copy
            row += w.shape[0]
        # Plain attributes, not buffers: DDP would broadcast buffers every step, and no state dict should hold them.
        self.w_aug = w_aug
        self.seeds = seeds
        self.members = tuple(members)
        self.sizes = tuple(w.shape[0] for w in weights)
        self.in_features, self.p = in_features, p
        blocks = settings.blocks or default_blocks()
        self.config = (in_features, r, scaling, p, settings.expand, settings.backend, tuple(blocks))
        self.backend = settings.backend
        self.enabled = True  # False: PEFT's forward (checks against PEFT with the same masks, check.py)
        self.pending = None  # (input tensor, [output or None per member]) between the members' calls

    def applies(self, member: nn.Module, x: torch.Tensor) -> bool:
        if not self.enabled or not torch.is_grad_enabled() or member.merged or member.disable_adapters:
            return False
        if list(member.active_adapters) != [ADAPTER] or x.shape[-1] != self.in_features:
            return False
        if self.backend == "triton":  # bf16 compute: the kernels' numerics are those of bf16 autocast
            autocast_bf16 = torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
            return x.is_cuda and (autocast_bf16 or x.dtype == torch.bfloat16)
        return True

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        pending = self.pending
        if pending is not None and pending[0] is x and pending[1][index] is not None:
            outs = list(pending[1])
            out = outs[index]
            outs[index] = None
            self.pending = (x, outs) if any(o is not None for o in outs) else None
            return out
        outs = self.compute(x)
        rest = [None if i == index else o for i, o in enumerate(outs)]
        self.pending = (x, rest) if len(outs) > 1 else None
        return outs[index]

    def compute(self, x: torch.Tensor) -> list[torch.Tensor]:
        in_features, r, scaling, p, expand, backend, blocks = self.config
        config = (in_features, r, scaling, p if self.training else 0.0, expand, backend, blocks)
        a_list = [m.lora_A[ADAPTER].weight for m in self.members]
        b_list = [m.lora_B[ADAPTER].weight for m in self.members]
        x2 = x.reshape(-1, in_features).to(self.w_aug.dtype)
        y = LoraGroupFunction.apply(x2, self.w_aug, self.seeds, config, *a_list, *b_list)
        return [t.reshape(*x.shape[:-1], t.shape[-1]) for t in y.split(self.sizes, dim=-1)]


class _FusedForward:
    """Mixed into a PEFT ``lora.Linear`` subclass: training calls go to the module's :class:`LoraGroup`."""

    def forward(self, x, *args, **kwargs):
        group = getattr(self, "_lorascope_group", None)
        if group is not None and not args and not kwargs and group.applies(self, x):
            return group.output(self._lorascope_index, x)
        return super().forward(x, *args, **kwargs)


_CLASSES: dict[type, type] = {}
_ORIGINAL: dict[type, type] = {}


def _fused_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type("Fused" + cls.__name__, (_FusedForward, cls), {})
        _ORIGINAL[_CLASSES[cls]] = cls
    return _CLASSES[cls]


@dataclass
class FusedLora:
    """What :func:`install_fused_lora` changed; :meth:`remove` restores PEFT's forward (weights stay bf16)."""

    groups: list[tuple[nn.Module, str, LoraGroup]] = field(default_factory=list)
    seeds: torch.Tensor | None = None
    hook: object = None
    settings: FusedSettings = FusedSettings()
    draw_seeds: bool = True  # False: keep the current seeds (check.py replays them through PEFT)

    @property
    def n_modules(self) -> int:
        return sum(len(g.members) for _, _, g in self.groups)

    def refresh(self, module: nn.Module, args, kwargs=None) -> None:
        """Pre-forward hook of the decoder stack: fresh dropout seeds for a training forward."""
        for _, _, group in self.groups:
            group.pending = None
        if module.training and self.seeds is not None and self.draw_seeds:
            self.seeds.random_(0, 2**62)

    def remove(self) -> None:
        if self.hook is not None:
            self.hook.remove()
        for parent, name, group in self.groups:
            for m in group.members:
                m.__class__ = _ORIGINAL[type(m)]
                for attr in ("_lorascope_group", "_lorascope_index"):
                    m.__dict__.pop(attr, None)
                m.base_layer.weight.data = m.base_layer.weight.data.clone()
            delattr(parent, name)
        self.groups = []


def _candidate_groups(model: nn.Module) -> list[tuple[nn.Module, str, list[nn.Module]]]:
    from peft.tuners.lora import Linear as LoraLinear

    by_parent: dict[int, tuple[nn.Module, dict[str, nn.Module]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLinear) and not isinstance(module, _FusedForward) and _eligible(module):
            parent_name, _, short = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            by_parent.setdefault(id(parent), (parent, {}))[1][short] = module
    out = []
    for parent, children in by_parent.values():
        left = dict(children)
        for names in SHARED_INPUT:
            members = [left[n] for n in names if n in left]
            if len(members) > 1 and len({_signature(m) for m in members}) == 1:
                out.append((parent, "_".join(n for n in names if n in left), members))
                for n in names:
                    left.pop(n, None)
        out.extend((parent, n, [m]) for n, m in left.items())
    return out


def install_fused_lora(model: nn.Module, settings: FusedSettings = FusedSettings()) -> FusedLora:
    """Install the fused path on every eligible LoRA module of ``model`` (a PEFT model); returns the handle.

    Call after the model is on its device and after ``speed.prepare_lora_for_speed``, before torch.compile and
    before DDP wrapping. Not for FSDP (its sharding owns the base weights this path stacks).
    """
    from lorascope.train.loss import unwrap_causal_lm

    found = _candidate_groups(model)
    handle = FusedLora(settings=settings)
    if not found:
        return handle
    device = found[0][2][0].base_layer.weight.device
    handle.seeds = torch.zeros(len(found), 3, dtype=torch.int64, device=device)
    for i, (parent, tag, members) in enumerate(found):
        group = LoraGroup(members, handle.seeds[i], settings)
        name = f"lorascope_fused_{tag}"
        parent.add_module(name, group)
        for j, m in enumerate(members):
            m.__class__ = _fused_class(type(m))
            object.__setattr__(m, "_lorascope_group", group)  # not a submodule: no cycle in the module tree
            object.__setattr__(m, "_lorascope_index", j)
        handle.groups.append((parent, name, group))
    handle.hook = unwrap_causal_lm(model).model.register_forward_pre_hook(handle.refresh)
    log.info("fused LoRA: %d modules in %d groups (%s)", handle.n_modules, len(found), settings)
    return handle
