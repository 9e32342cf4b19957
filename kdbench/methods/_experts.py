"""Expert banks and Gumbel-softmax selection shared by DE and HTD (spec §4.3, §4.4).

Both methods reconstruct the teacher representation t_e from the student's s_e with M small MLP experts

    E_m(s) = W2_m · ReLU(W1_m · s + b1_m) + b2_m,   m = 1..M,

mixed by a selection z_e (Gumbel-softmax of a gate on t_e): t̂_e = Σ_m z_{e,m} E_m(s_e).

Cost. The official code (Kang DE.py/model.py, KDs) runs the M experts in a Python loop and materialises all
outputs, [n, d_t, M]. :class:`ExpertBank` stores the experts stacked ([M, d_s, h], [M, h], [M, h, d_t], [M, d_t])
and needs two GEMMs whatever M is: the first layers of all experts are one [n, d_s] @ [d_s, M·h] product, and
since the mixture is linear in each expert's output,

    Σ_m z_m (W2_m h_m + b2_m) = [z_1 h_1, …, z_M h_M] @ [W2_1; …; W2_M] + z @ B2,

the z-weighted hidden units go through one [n, M·h] @ [M·h, d_t] product, so the [n, M, d_t] tensor of all
outputs is never built (same MACs, ~d_t/h times less activation memory). Forward + backward, M 30, d_s 20,
d_t 400 (h 210), n = 2048 rows, on a shared 2-core CPU (1 thread, best of 7): this formulation 775 ms; einsum
'nd,mdh->nmh' + 'nmh,mht->nmt' then the z-weighted sum 1232 ms; einsum with z folded in ('nmh,nm,mht->nt')
1010 ms; torch.bmm over the expert axis 1134 ms; the official Python loop 535 ms (its per-expert blocks stay in
cache on one CPU thread; with 2 contended threads the loop took 3.6 s against 1.05 s here, and on a GPU it
costs several kernel launches per expert and call). The remaining cost is M× that of the selected expert alone:
a top-1 path for one-hot z would need grouped GEMMs or a host sync for group sizes, and is not implemented.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .base import Distiller

if TYPE_CHECKING:
    from ..backbones import Backbone
    from ..datasets import Dataset
    from ..teacher import Teacher
    from .base import DistillerConfig

log = logging.getLogger(__name__)


def expert_hidden(d_s: int, d_t: int, override: int = 0) -> int:
    """Hidden width of an expert: (d_s + d_t)//2, or d_s//2 for self-distillation d_s = d_t (Kang DE.py)."""
    if override:
        return override
    return d_s // 2 if d_s == d_t else (d_s + d_t) // 2


class ExpertBank(nn.Module):
    """M experts Linear(d_in, h) → ReLU → Linear(h, d_out), evaluated together by two batched GEMMs."""

    def __init__(self, num_experts: int, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.num_experts, self.d_in, self.hidden, self.d_out = num_experts, d_in, hidden, d_out
        self.w1 = nn.Parameter(torch.empty(num_experts, d_in, hidden))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, d_out))
        self.b2 = nn.Parameter(torch.empty(num_experts, d_out))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nn.Linear's init (kaiming-uniform a=√5 weight, uniform ±1/√fan_in bias), drawn in the same order as a
        list of ``nn.Sequential(Linear, ReLU, Linear)`` experts, so a seeded bank equals the official module list."""
        for m in range(self.num_experts):
            for w, b, (fan_out, fan_in) in ((self.w1, self.b1, (self.hidden, self.d_in)),
                                            (self.w2, self.b2, (self.d_out, self.hidden))):
                tmp = torch.empty(fan_out, fan_in)          # nn.Linear's [out, in] layout, then transposed in
                nn.init.kaiming_uniform_(tmp, a=math.sqrt(5))
                w[m].copy_(tmp.T)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(b[m], -bound, bound)

    def hidden_units(self, s: torch.Tensor) -> torch.Tensor:
        """ReLU(first layers) of all experts as one [n, M·h] GEMM."""
        w1 = self.w1.permute(1, 0, 2).reshape(self.d_in, -1)   # [d_in, M·h] (a small copy of the weights)
        return torch.relu(torch.addmm(self.b1.reshape(-1), s, w1))

    def forward(self, s: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Mixture Σ_m z_{·,m} E_m(s) [n, d_out] for selection weights z [n, M]; without z, every expert's output
        [n, M, d_out] (for tests and analysis)."""
        hid = self.hidden_units(s)
        if z is None:
            h = hid.view(len(s), self.num_experts, self.hidden)
            return torch.einsum("nmh,mho->nmo", h, self.w2) + self.b2
        zh = (hid.view(len(s), self.num_experts, self.hidden) * z.unsqueeze(-1)).view(len(s), -1)
        return torch.addmm(z @ self.b2, zh, self.w2.reshape(-1, self.d_out))


def gumbel_selection(probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """z = softmax((log(α + 1e-10) + g)/T), g ~ Gumbel(0, 1) drawn fresh per call (Kang DE.py); M = 1 → z = 1."""
    if probs.shape[1] == 1:
        return torch.ones_like(probs)
    g = -torch.empty_like(probs, requires_grad=False).exponential_(generator=generator).clamp_min_(1e-30).log()
    return torch.softmax((torch.log(probs + 1e-10) + g) / temperature, dim=1)


def annealed_temperature(epoch: int, t0: float, t_end: float, anneal_epochs: int) -> float:
    """T_e = max(T_end, T0·(T_end/T0)^{e/max_epochs}) (spec §4.3; Kang/KDs: T0 1, T_end 1e-10, max_epochs 1000)."""
    return max(t_end, t0 * (t_end / t0) ** (epoch / anneal_epochs))


def make_generator(device: torch.device) -> torch.Generator:
    """A Gumbel-noise generator seeded from the harness's per-cell torch seed."""
    return torch.Generator(device).manual_seed(int(torch.initial_seed()) % 2**63)


def make_gate(d_t: int, num_experts: int) -> nn.Module:
    """Selection network Linear(d_t, M) → softmax on the teacher representation."""
    return nn.Sequential(nn.Linear(d_t, num_experts), nn.Softmax(dim=1))


class GumbelExperts(nn.Module):
    """Per-side (users, items) expert banks with a selection gate on the teacher representation and Gumbel-softmax
    selection at an annealed temperature: DE's reconstruction, and HTD's group-assignment (GA) network."""

    def __init__(self, num_experts: int, d_s: int, d_t: int, hidden: int, t0: float, t_end: float,
                 anneal_epochs: int) -> None:
        super().__init__()
        self.user_experts = ExpertBank(num_experts, d_s, hidden, d_t)
        self.item_experts = ExpertBank(num_experts, d_s, hidden, d_t)
        self.user_gate = make_gate(d_t, num_experts)
        self.item_gate = make_gate(d_t, num_experts)
        self.schedule = (t0, t_end, anneal_epochs)
        self.temperature = annealed_temperature(0, *self.schedule)
        self.generator: torch.Generator | None = None

    def start(self, device: torch.device) -> None:
        self.generator = make_generator(device)

    def set_epoch(self, epoch: int) -> None:
        self.temperature = annealed_temperature(epoch, *self.schedule)

    def _side(self, side: str) -> tuple[ExpertBank, nn.Module]:
        return (self.user_experts, self.user_gate) if side == "user" else (self.item_experts, self.item_gate)

    def reconstruct(self, side: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """t̂ = Σ_m z_m E_m(s), z the Gumbel-softmax selection of gate(t) at the current temperature."""
        if self.generator is None:
            self.start(t.device)
        experts, gate = self._side(side)
        return experts(s, gumbel_selection(gate(t), self.temperature, self.generator))

    def assign(self, side: str, t: torch.Tensor) -> torch.Tensor:
        """Hard selection argmax gate(t) (HTD's groups)."""
        return self._side(side)[1](t).argmax(1)


class GumbelExpertDistiller(Distiller):
    """Base of the distillers that train Gumbel-selected experts (DE, HTD): builds the per-side experts from the
    config (``expert_count_field``, ``expert_hidden``, ``T0``, ``T_end``, ``anneal_epochs``), seeds their noise
    before training and anneals the temperature at each epoch."""

    expert_count_field: ClassVar[str] = "num_experts"

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: DistillerConfig) -> None:
        super().__init__(teacher, student, data, cfg)
        n = getattr(cfg, self.expert_count_field)
        if n < 1:
            raise ValueError(f"{self.name} {self.expert_count_field} must be >= 1, not {n}")
        h = expert_hidden(student.dim, teacher.dim, cfg.expert_hidden)
        self.experts = GumbelExperts(n, student.dim, teacher.dim, h, cfg.T0, cfg.T_end, cfg.anneal_epochs)

    def precompute(self) -> None:
        self.experts.start(self.teacher.user_repr.device)

    def on_epoch_start(self, epoch: int) -> None:
        self.experts.set_epoch(epoch)
        log.debug("%s epoch %d: Gumbel temperature %.3g", self.name, epoch, self.experts.temperature)
