"""The training objective: parts that declare their terms; the loop sums, checks and logs what they return.

    total = Σ over parts, Σ over each part's terms (in declared order) of  weight · value

A part (`ObjectivePart`) is one loss with its own teacher side:

    name                 its key in the checkpoint's objective state ("franca", "gram", …)
    terms                its summands: `Term(name, weight, needs)`; `needs` names the `StudentOutput` fields
                         the term reads (the student pass skips a head no term needs)
    modules              trainable modules it owns, joined to the student under these names: optimised,
                         clipped, averaged into the EMA teacher, checkpointed and wrapped by DDP/FSDP like
                         the heads (a distillation projection, say); most parts own none
    module_inputs        optional {module name: StudentOutput field}: modules the student pass itself applies
                         to that field, their outputs in `student.extra[name]` (a module used in the step
                         must run inside the DDP-wrapped pass, or DDP cannot reduce its gradients when some
                         head goes unused); a module not named here is the part's to call
    targets(step)        no gradient, before the student pass: the EMA teacher's Sinkhorn targets, a frozen
                         Gram teacher's Gram matrices, a frozen distillation teacher's outputs …
    __call__(student=, targets=, step=) -> {term name: value, …}: every declared term's unweighted scalar,
                         plus any further scalars to log (per-level values, entropies)
    state_dict() / load_state_dict(state | None): what it carries across iterations (centering state, a
                         Gram teacher), saved in the checkpoint and restored on --resume

The loop never names a term: it calls `Objective.targets`, the student pass, `Objective.__call__` and
`Objective.total`, then checks every returned value for NaN/inf and logs them all (metrics.jsonl, the
progress bar). A new loss term is one new part plus its builder in `franca.train.build.OBJECTIVE_PARTS`
(and its config keys); `Trainer(cfg, extra_parts=[...])` adds parts without any config.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Protocol, runtime_checkable

import torch
from torch import nn

from franca.train.schedules import ScheduleValues

log = logging.getLogger(__name__)

__all__ = ["Objective", "ObjectivePart", "PartContext", "StepInputs", "StudentOutput", "Term"]


@dataclass
class StudentOutput:
    """What the student pass offers the terms (each field None when no term needs it or the batch has none)."""

    global_cls: Optional[list[torch.Tensor]]
    """L x (2B, K_l) dino-head logits of the global crops' CLS tokens, stacked [crop 1; crop 2]"""
    local_cls: Optional[list[torch.Tensor]]
    """L x (n_L·B, K_l) dino-head logits of the local crops' CLS tokens (None without local crops)"""
    masked_patches: Optional[list[torch.Tensor]]
    """L x (M, K_l) ibot-head logits of the masked patch tokens, in mask_indices order (None without masks)"""
    global_backbone_cls: torch.Tensor
    """(2B, D) backbone CLS tokens (x_norm_clstoken) of the global crops"""
    global_patch_tokens: torch.Tensor
    """(2B, N, D) backbone patch tokens (x_norm_patchtokens) of the global crops, masked as the student sees them"""
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """the outputs of the objective's modules that the student pass applies (`module_inputs`), by module name"""


STUDENT_FIELDS = frozenset(f.name for f in fields(StudentOutput)) - {"extra"}
LOOP_NAMES = frozenset({"total", "iteration", "lr", "wd", "momentum", "teacher_temp", "skipped_files", "epoch"})
"""Names the loop logs itself (with every `grad_norm_<module>`): no part may return them."""


@dataclass(frozen=True)
class StepInputs:
    """What every part sees of the current iteration."""

    batch: dict[str, Any]
    iteration: int
    schedule: ScheduleValues


@dataclass(frozen=True)
class PartContext:
    """What a part's builder (`franca.train.build.OBJECTIVE_PARTS`) may use besides the config."""

    student: dict[str, nn.Module]
    """the student's modules (backbone, dino_head, ibot_head) as built, on `device`"""
    teacher: dict[str, nn.Module]
    """the EMA teacher's modules; the same dict the loop updates in place"""
    device: torch.device
    total_iterations: int
    """the run's planned length"""


@dataclass(frozen=True)
class Term:
    """One summand of the total: `weight · value`, value returned under `name` by its part."""

    name: str
    weight: float
    needs: tuple[str, ...] = ()
    """the StudentOutput fields it reads"""


@runtime_checkable
class ObjectivePart(Protocol):
    """One loss with its teacher side (see the module docstring)."""

    name: str
    terms: tuple[Term, ...]
    modules: dict[str, nn.Module]

    def targets(self, step: StepInputs) -> Any: ...

    def __call__(self, *, student: StudentOutput, targets: Any, step: StepInputs) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None: ...


class Objective:
    """The parts of one run; validates their declarations once, at construction."""

    def __init__(self, parts: Sequence[ObjectivePart]) -> None:
        if not parts:
            raise ValueError("an objective needs at least one part")
        self.parts = tuple(parts)
        _unique("part", (p.name for p in self.parts))
        self.terms: tuple[Term, ...] = tuple(t for p in self.parts for t in p.terms)
        _unique("term", (t.name for t in self.terms))
        for p in self.parts:
            for t in p.terms:
                unknown = sorted(set(t.needs) - STUDENT_FIELDS)
                if unknown:
                    raise ValueError(
                        f"objective part {p.name!r}: term {t.name!r} needs {unknown}, which the student pass does "
                        f"not make (it offers {sorted(STUDENT_FIELDS)})"
                    )
        self.modules: dict[str, nn.Module] = {k: m for p in self.parts for k, m in p.modules.items()}
        _unique("module", (k for p in self.parts for k in p.modules))
        self.module_inputs: dict[str, str] = {}
        """{module name: the StudentOutput field the student pass applies it to} over every part"""
        for p in self.parts:
            for name, source in getattr(p, "module_inputs", {}).items():
                if name not in p.modules:
                    raise ValueError(f"objective part {p.name!r}: module_inputs names {name!r}, not one of its modules")
                if source not in STUDENT_FIELDS:
                    raise ValueError(
                        f"objective part {p.name!r}: module {name!r} reads {source!r}, which the student pass does "
                        f"not make (it offers {sorted(STUDENT_FIELDS)})"
                    )
                self.module_inputs[name] = source
        self.needs = frozenset(n for t in self.terms for n in t.needs) | frozenset(self.module_inputs.values())

    def part(self, name: str) -> ObjectivePart:
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(f"no objective part {name!r} (parts: {[p.name for p in self.parts]})")

    def targets(self, step: StepInputs) -> list[Any]:
        """Every part's teacher side, in order (no gradient is taken through them)."""
        return [p.targets(step) for p in self.parts]

    def __call__(self, *, student: StudentOutput, targets: Sequence[Any], step: StepInputs) -> dict[str, torch.Tensor]:
        """Every part's values in one dict: its terms' unweighted values and what else it logs."""
        out: dict[str, torch.Tensor] = {}
        for p, t in zip(self.parts, targets, strict=True):
            values = p(student=student, targets=t, step=step)
            missing = [term.name for term in p.terms if term.name not in values]
            if missing:
                raise KeyError(f"objective part {p.name!r} returned no value for its terms {missing}")
            taken = sorted(k for k in values if k in LOOP_NAMES or k.startswith("grad_norm_"))
            if taken:
                raise KeyError(f"objective part {p.name!r} returns {taken}, names the training loop logs itself")
            clash = sorted(set(values) & set(out))
            if clash:
                raise KeyError(f"objective part {p.name!r} returns {clash}, already returned by another part")
            out.update(values)
        return out

    def total(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """Σ weight · value over the declared terms, in declared order (the one quantity optimised)."""
        total: Optional[torch.Tensor] = None
        for t in self.terms:
            x = t.weight * values[t.name]
            total = x if total is None else total + x
        assert total is not None
        return total

    def state_dict(self) -> dict[str, Any]:
        """{part name: its state} for the parts that carry any (empty for the default objective)."""
        return {p.name: s for p in self.parts if (s := p.state_dict())}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        """Give each part its saved state (None where the checkpoint holds none for it)."""
        state = state or {}
        unknown = sorted(set(state) - {p.name for p in self.parts})
        if unknown:
            log.warning("the checkpoint holds state of objective parts %s, which this run does not use", unknown)
        for p in self.parts:
            p.load_state_dict(state.get(p.name))


def _unique(what: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise ValueError(f"two objective {what}s are named {n!r}")
        seen.add(n)
