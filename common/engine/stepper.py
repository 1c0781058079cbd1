"""Named optimizers and what an update needs around them: one AMP gradient scaler each, a
learning rate per update step from each one's schedule, micro-batches weighted by the task's
count, gradients averaged over processes when DDP does not do it, clipping and the gradient
norm. The Trainer owns one Stepper; a task's training step reaches it through
trainer.backward and trainer.step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from common.core import distributed
from common.core.errors import UserError
from common.engine.optim import OptimizerSpec, build_optimizer, lr_factor, set_lr


class Stepper:
    def __init__(self, specs: dict[str, OptimizerSpec], *, fp16: bool, world: int,
                 sync_grads: bool, clip_grad_norm: float, log_grad_norm: bool):
        """sync_grads: average gradients over processes here (a task's own training step);
        otherwise DDP has averaged them during backward."""
        self.optimizers = {n: build_optimizer(s.params, s.optim) for n, s in specs.items()}
        self.schedules = {n: (s.optim.lr, s.sched) for n, s in specs.items()}
        self.lr = {n: s.optim.lr for n, s in specs.items()}
        self.params = {n: [p for g in o.param_groups for p in g["params"]]
                       for n, o in self.optimizers.items()}
        self.scalers = {n: torch.amp.GradScaler("cuda") if fp16 else None
                        for n in self.optimizers}
        self.world, self.sync_grads = world, sync_grads
        self.clip_grad_norm, self.log_grad_norm = clip_grad_norm, log_grad_norm
        self.total_steps, self.steps_per_epoch = 1, 1
        self.norms: dict[str, torch.Tensor] = {}            # this update's gradient norms
        self._micro = dict.fromkeys(self.optimizers, 0)    # micro-batches since the last step
        self._count = dict.fromkeys(self.optimizers, 0.0)  # their summed counts
        self._ref = dict.fromkeys(self.optimizers, 1.0)    # the first one's count

    def owner_of(self, module: nn.Module) -> str | None:
        """The optimizer that updates `module`'s parameters (None: none does)."""
        ids = {id(p) for p in module.parameters()}
        return next((n for n, ps in self.params.items() if any(id(p) in ids for p in ps)), None)

    def backward(self, loss: torch.Tensor, name: str, count) -> None:
        """Backward `loss` (a mean over `count` units) into the gradients of optimizer `name`'s
        parameters. Micro-batches add up weighted by their counts and `step` divides by the
        total, so an accumulated update equals the big batch, also across processes."""
        micro = self._micro[name]
        if micro == 0:
            self._ref[name] = count if self.world == 1 else 1.0
        weighted = loss if micro == 0 and self.world == 1 else loss * (count / self._ref[name])
        if self.scalers[name] is not None:
            weighted = self.scalers[name].scale(weighted)
        if self.sync_grads or len(self.optimizers) > 1:
            # only this optimizer's parameters: G's loss leaves D's alone
            weighted.backward(inputs=self.params[name])
        else:
            weighted.backward()
        self._micro[name] = micro + 1
        self._count[name] = self._count[name] + count

    def _normalise(self, name: str) -> None:
        """Turn the summed, count-weighted gradients into the mean over every unit of the
        update, on every process."""
        params = self.params[name]
        if self.world == 1:
            if self._micro[name] <= 1:
                return
            factor = float(self._ref[name] / self._count[name])
        else:
            total = distributed.all_sum([float(self._count[name])])[0]
            if self.sync_grads:
                distributed.all_reduce_grads(params)  # summed; DDP has averaged already
            factor = (1.0 if self.sync_grads else self.world) / total
        grads = [p.grad for p in params if p.grad is not None]
        if grads and factor != 1.0:
            torch._foreach_mul_(grads, factor)

    def step(self, name: str, step: int) -> None:
        """Update `name` as update number `step` (0-based): its learning rate, unscale (fp16),
        normalise, clip, step, zero the gradients."""
        opt, scaler, params = self.optimizers[name], self.scalers[name], self.params[name]
        base_lr, sched = self.schedules[name]
        self.lr[name] = set_lr(opt, base_lr, lr_factor(
            step, sched, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch))
        if scaler is not None:
            scaler.unscale_(opt)
        self._normalise(name)
        if self.clip_grad_norm > 0:
            self.norms[name] = nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        elif self.log_grad_norm:
            self.norms[name] = nn.utils.get_total_norm(
                [p.grad for p in params if p.grad is not None])
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        self._micro[name], self._count[name] = 0, 0.0

    def pop_norms(self) -> dict[str, torch.Tensor]:
        norms, self.norms = self.norms, {}
        return norms

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
                "scalers": {n: s.state_dict() if s else None for n, s in self.scalers.items()}}

    def load_state_dict(self, state: dict[str, Any], path) -> None:
        if set(state["optimizers"]) != set(self.optimizers):
            raise UserError(f"{path}: holds optimizers {', '.join(state['optimizers'])}, this "
                            f"task has {', '.join(self.optimizers)}; resume with its own task")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
            saved = state.get("scalers", {}).get(name)
            if self.scalers[name] is not None and saved:
                self.scalers[name].load_state_dict(saved)
