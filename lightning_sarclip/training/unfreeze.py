"""Staged unfreezing: which parameter groups train when, and at what learning-rate multiplier.

Design (chosen because Lightning's ``BackboneFinetuning`` breaks under DDP and on resume, PL #20340 / #21901):

* Every parameter is in the optimizer from the first step, so the optimizer's parameter groups never change
  shape, on any rank, before or after a resume.
* A group is *frozen* for a stage by ``requires_grad=False`` (and a learning-rate multiplier of 0), switched by
  ``SARCLIPModule`` at stage boundaries only. Autograd then computes no gradient for it, and a frozen trunk under
  trainable projections runs its forward outside the graph: no backward compute and no saved activations for it.
  A frozen parameter has no gradient, so AdamW skips it entirely (no update, no weight decay, moments untouched)
  and gradient clipping only sees the groups that train.
* DDP's reducer is built for the parameters that require a gradient, so the module re-wraps the model at a stage
  boundary (one broadcast of the weights; the new reducer averages only what trains). FSDP2 reads
  ``requires_grad`` from the sharded parameters at every unshard and reduce-scatters only gradients that exist.
* The stage in force is a pure function of ``(epoch, global_step)``, so a resumed run recomputes it (and with it
  ``requires_grad``); the only state, the set of groups that trained at the last step, is saved in the checkpoint
  so that a group which unfreezes right after a resume still gets its optimizer state reset.
* When a group unfreezes, its AdamW state is cleared: moments from an earlier training period would otherwise
  push it with stale statistics.

Outside ``fit`` every parameter requires a gradient again, as the model was built.

Parameter groups (``UnfreezeSchedule.group_names``) for open_clip models::

    vision.stem  vision.block.0 ... vision.block.N-1  vision.head  vision.proj
    text.stem    text.block.0   ... text.block.M-1    text.head    text.proj
    logit_scale  (and any parameter no rule matched: other)

A stage's ``train`` list holds selectors: ``all``, ``vision``, ``text``, ``projections`` (both ``*.proj``),
``logit_scale``, a group name (``vision.head``), or blocks by depth: ``vision.blocks`` (all), ``vision.blocks[-4:]``
(the last four), ``text.blocks[0]``. Each stage lists *everything* that trains while it is in force.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

# (regex on the parameter name, group). The first match wins; ``{i}`` takes the block index from group 1.
_RULES: tuple[tuple[str, str], ...] = (
    (r"^logit_(scale|bias)$", "logit_scale"),
    # image towers: open_clip ViT, timm trunk, ModifiedResNet
    (r"^visual\.transformer\.resblocks\.(\d+)\.", "vision.block.{i}"),
    (r"^visual\.trunk\.blocks\.(\d+)\.", "vision.block.{i}"),
    (r"^visual\.trunk\.stages\.(\d+)\.", "vision.block.{i}"),
    (r"^visual\.layer(\d+)\.", "vision.block.{i-1}"),
    (r"^visual\.proj$", "vision.proj"),
    (r"^visual\.head\.", "vision.proj"),
    (r"^visual\.(ln_post|attn_pool|attnpool|trunk\.norm|trunk\.fc_norm|trunk\.head)", "vision.head"),
    (r"^visual\.", "vision.stem"),
    # text towers: open_clip's built-in text transformer, CustomTextCLIP's ``text.``, HF text towers
    (r"^(?:text\.)?transformer\.resblocks\.(\d+)\.", "text.block.{i}"),
    (r"^text\.transformer\.(?:encoder\.)?layers?\.(\d+)\.", "text.block.{i}"),
    (r"^(?:text\.)?text_projection$", "text.proj"),
    (r"^text\.proj(\.|$)", "text.proj"),
    (r"^(?:text\.)?ln_final\.", "text.head"),
    (r"^(?:text\.)?(token_embedding|positional_embedding)", "text.stem"),
    (r"^text\.", "text.stem"),
)
_COMPILED = tuple((re.compile(pattern), group) for pattern, group in _RULES)
_BLOCK_SELECTOR = re.compile(r"^(vision|text)\.blocks(?:\[(-?\d*)(?::(-?\d*))?\])?$")


def group_of(param_name: str) -> str:
    """The unfreezing group a parameter belongs to."""
    for pattern, group in _COMPILED:
        match = pattern.match(param_name)
        if match:
            if "{i}" in group:
                return group.replace("{i}", match.group(1))
            if "{i-1}" in group:
                return group.replace("{i-1}", str(int(match.group(1)) - 1))
            return group
    return "other"


def _block_index(group: str) -> int:
    return int(group.rsplit(".", 1)[1])


@dataclass
class UnfreezeStage:
    """One stage of the schedule: from ``start_epoch`` (or ``start_step``) on, exactly ``train`` trains.

    ``lr_scale`` maps selectors to extra learning-rate multipliers for this stage (e.g. ``{"vision": 0.1}``).
    """

    train: list[str]
    start_epoch: int | None = None
    start_step: int | None = None
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.start_epoch is None) == (self.start_step is None):
            raise ValueError(
                f"unfreeze stage {self.train}: give exactly one of start_epoch or start_step "
                f"(got start_epoch={self.start_epoch}, start_step={self.start_step})"
            )
        if (self.start_epoch or 0) < 0 or (self.start_step or 0) < 0:
            raise ValueError(f"unfreeze stage {self.train}: start must be >= 0")
        if isinstance(self.train, str):
            self.train = [self.train]

    def started(self, epoch: int, step: int) -> bool:
        return epoch >= self.start_epoch if self.start_epoch is not None else step >= self.start_step


def as_stages(stages: Iterable[UnfreezeStage | dict] | None) -> list[UnfreezeStage]:
    """Accept dataclasses or plain dicts (YAML, saved hyper-parameters)."""
    return [s if isinstance(s, UnfreezeStage) else UnfreezeStage(**s) for s in (stages or [])]


class UnfreezeSchedule:
    """Resolve stages against a model's parameter groups; answer 'which LR multiplier now' for every group."""

    def __init__(
        self,
        model: nn.Module,
        stages: Sequence[UnfreezeStage | dict] | None = None,
        layer_decay: float | None = None,
    ) -> None:
        self.groups: OrderedDict[str, list[tuple[str, nn.Parameter]]] = OrderedDict()
        for name, param in model.named_parameters():
            self.groups.setdefault(group_of(name), []).append((name, param))
        self.stages = as_stages(stages)
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"layer_decay: expected a value in (0, 1], got {layer_decay}")
        self.layer_decay = layer_decay
        self._check_stages()
        # Per stage: the set of trained groups and their stage multipliers, resolved once.
        self._resolved = [self._resolve_stage(i, s) for i, s in enumerate(self.stages)]
        self.last_active: frozenset[str] | None = None

    @property
    def group_names(self) -> list[str]:
        return list(self.groups)

    def _check_stages(self) -> None:
        if not self.stages:
            return
        first = self.stages[0]
        if not first.started(0, 0):
            raise ValueError(
                "unfreeze: the first stage must start at epoch 0 or step 0 "
                f"(got start_epoch={first.start_epoch}, start_step={first.start_step}); "
                "otherwise nothing says what trains before it"
            )

    def select(self, selector: str, where: str = "unfreeze") -> list[str]:
        """Group names a selector stands for; raises on a selector that names nothing in this model."""
        names = self.group_names
        if selector == "all":
            chosen = names
        elif selector in ("vision", "text"):
            chosen = [n for n in names if n.startswith(selector + ".")]
        elif selector == "projections":
            chosen = [n for n in names if n in ("vision.proj", "text.proj")]
        elif (match := _BLOCK_SELECTOR.match(selector)) is not None:
            tower, start, stop = match.groups()
            blocks = sorted((n for n in names if n.startswith(f"{tower}.block.")), key=_block_index)
            if match.group(2) is None:
                chosen = blocks
            elif stop is None and ":" not in selector:
                index = int(start)
                chosen = [blocks[index]] if -len(blocks) <= index < len(blocks) else []
            else:
                chosen = blocks[slice(int(start) if start else None, int(stop) if stop else None)]
        else:
            chosen = [selector] if selector in self.groups else []
        if not chosen:
            raise ValueError(
                f"{where}: selector {selector!r} matches no parameter group of this model. "
                f"Groups: {self._describe_groups()}; selectors: all, vision, text, projections, logit_scale, "
                "vision.blocks[-k:], text.blocks[i], or a group name"
            )
        return chosen

    def _describe_groups(self) -> str:
        blocks = {t: sum(n.startswith(f"{t}.block.") for n in self.groups) for t in ("vision", "text")}
        others = [n for n in self.groups if ".block." not in n]
        return f"{others} + vision.block.0..{blocks['vision'] - 1} + text.block.0..{blocks['text'] - 1}"

    def _resolve_stage(self, index: int, stage: UnfreezeStage) -> dict[str, float]:
        where = f"unfreeze stage {index}"
        trained = {g for selector in stage.train for g in self.select(selector, where)}
        scales = dict.fromkeys(trained, 1.0)
        for selector, scale in stage.lr_scale.items():
            if scale < 0:
                raise ValueError(f"{where}: lr_scale[{selector!r}] must be >= 0, got {scale}")
            for group in self.select(selector, where):
                if group in scales:
                    scales[group] *= float(scale)
        return scales

    def layer_scale(self, group: str) -> float:
        """Layer-wise LR decay: blocks near the output keep the full LR, the stem gets ``decay ** (depth + 1)``."""
        if self.layer_decay is None:
            return 1.0
        tower = group.split(".", 1)[0]
        if tower not in ("vision", "text"):
            return 1.0
        depth = sum(n.startswith(f"{tower}.block.") for n in self.groups)
        if group.endswith(".stem"):
            layer = 0
        elif ".block." in group:
            layer = _block_index(group) + 1
        else:
            layer = depth + 1
        return self.layer_decay ** (depth + 1 - layer)

    def stage_index(self, epoch: int, step: int) -> int | None:
        """Index of the stage in force (the last one that has started), or None without a schedule."""
        current = None
        for i, stage in enumerate(self.stages):
            if stage.started(epoch, step):
                current = i
        return current

    def multipliers(self, epoch: int, step: int) -> dict[str, float]:
        """LR multiplier for every group at this point: 0 for frozen groups."""
        index = self.stage_index(epoch, step)
        stage_scales = self._resolved[index] if index is not None else None
        result = {}
        for group in self.groups:
            stage = 1.0 if stage_scales is None else stage_scales.get(group, 0.0)
            result[group] = stage * self.layer_scale(group)
        return result

    def active(self, epoch: int, step: int) -> frozenset[str]:
        return frozenset(g for g, m in self.multipliers(epoch, step).items() if m > 0)

    def stages_as_dicts(self) -> list[dict]:
        return [asdict(s) for s in self.stages]

    def state_dict(self) -> dict:
        return {"last_active": sorted(self.last_active) if self.last_active is not None else None}

    def load_state_dict(self, state: dict) -> None:
        last = state.get("last_active")
        self.last_active = frozenset(last) if last is not None else None


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """open_clip's ``cosine_lr`` as a multiplier: linear warmup ``(step + 1) / warmup``, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
