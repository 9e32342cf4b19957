"""HTD: Hierarchical Topology Distillation (Kang et al., "Topology Distillation for Recommender System", KDD 2021).

The student cannot hold the teacher's full topology (FTD), so entities are clustered into teacher-defined groups and
only **within-group** entity relations and **group–entity** relations (via prototypes) are distilled. Per side,
K_g group experts f_k (DE's MLP shape) and an assignment net v = Linear(d_t, K_g) → softmax on the teacher
representation; item group ids are offset by K_g (2K_g groups). With U_B = uniq(u), I_B = uniq(P ∪ N), s, t the
batch entities' student/teacher features (users then items) and z_a = argmax v(t_a) (no_grad):

    L_GA  = Σ_{a∈U_B} ‖t_a − Σ_k z̃_{a,k} f_k(s_a)‖² + Σ_{a∈I_B} (same, item side),
            z̃ = softmax((log(v(t) + 1e-10) + g)/T), g ~ Gumbel(0, 1)          (DE with experts = groups; weight 1)
    P^m_g = mean of the m-features of the batch entities in group g, for groups present, m ∈ {T, S}  (no_grad)
    L_ent = Σ_{(a,b): z_a = z_b, cos(t_a, t_b) > 0} (cos(s_a, s_b) − cos(t_a, t_b))²   (self-pairs included)
    L_grp = Σ_{g present} Σ_a (cos(P^S_g, s_a) − cos(P^T_g, t_a))²                  (``second``, default)
            or Σ_{g,h} (cos(P^S_g, P^S_h) − cos(P^T_g, P^T_h))²                      (``first``)
    L_HTD = α(L_ent + L_grp) + (1 − α) L_GA

with T annealed as in DE, T_e = max(T_end, T0·(T_end/T0)^{e/1000}), T0 1, T_end 1e-10 (spec §4.4, §7 #10, #11).
``loss`` returns ``kd_topo`` = α(L_ent + L_grp) and ``kd_ga`` = (1 − α)L_GA (omitted when α = 1); their sum is
L_HTD. Defaults (KDs, BPR CiteULike): K_g 30, α 0.9, λ 0.5, ``second`` (Kang notebook: K_g 30, α 0.5, λ 1e-3).
Reference: SeongKu-Kang/Topology_Distillation_KDD21 ``model.py`` class ``HTD`` (``get_GA_loss``, ``get_TD_loss1/2``)
and notebook "Guide to using topology distillation"; KDs ``modeling/KD/cf/baseline.py`` ``HTD``.

Switches: ``htd_mask=parity`` keeps the reference's cos(t_a, t_b) > 0 condition, an artefact of masking by
multiplication (``group_only`` drops it); ``group_level=first`` reproduces the reference quirk that both
prototype sets are built under no_grad, so that term has no gradient, unless ``htd_proto_grad=true`` [deviation],
which builds P^S with gradient (for ``second`` too); ``group_level=none`` drops L_grp. ``group_assignment``
replaces the learned groups by ``single`` (all batch users and items in one group: with ``htd_mask=group_only``,
L_ent is exactly FTD's loss) or ``entity`` (one group per entity: P_g = the entity, L_ent has only self-pairs
(= 0) and L_grp is exactly FTD's loss) — controls that relate HTD to FTD.

Deviations: the experts run as one :class:`~kdbench.methods._experts.ExpertBank`; the expert width follows DE
((d_s + d_t)//2, d_s//2 only when d_s = d_t, where the reference keeps (d_s + d_t)//2); the reference's fixed
``self.T = 0.1`` is replaced by the annealing of KDs and the notebook (spec §4.4); Gumbel noise from a generator
seeded from the run's torch seed; final representations by default (spec §2.4); SimpleX uses only the first
negative column (spec §4.0 cap). Experts and assignment nets are discarded at inference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..backbones.base import rows_of
from ._common import student_features
from ._experts import GumbelExpertDistiller
from .base import DistillerConfig, register_distiller
from .ftd import cosine_matrix, topology_entities

if TYPE_CHECKING:
    from ..backbones import Backbone, BackboneOutput
    from ..datasets import Dataset
    from ..teacher import Teacher


@dataclass(frozen=True)
class HTDConfig(DistillerConfig):
    weight: float = 0.5            # λ, KDs BPR CiteULike (Kang notebook: 1e-3)
    num_groups: int = 30           # K_g per side, KDs (= Kang notebook)
    alpha: float = 0.9             # α, KDs BPR CiteULike (KDs Gowalla-BPR and Kang notebook: 0.5)
    group_level: str = "second"    # second: prototype–entity (notebook, KDs) | first: prototype–prototype | none
    htd_mask: str = "parity"       # parity: same group AND teacher cos > 0 (Kang, KDs) | group_only (spec §7 #10)
    htd_proto_grad: bool = False   # True: student prototypes with gradient [deviation]; Kang/KDs: no_grad
    group_assignment: str = "learned"  # learned: argmax v(t) per side | single: one group | entity: one per entity
    T0: float = 1.0                # initial Gumbel temperature (KDs, notebook)
    T_end: float = 1e-10           # final temperature (KDs, notebook)
    anneal_epochs: int = 1000      # `max_epochs` of the schedule, fixed (spec §4.3/§4.4; KDs configured epochs)
    expert_hidden: int = 0         # group-expert width; 0 = DE's rule (d_s+d_t)//2, d_s//2 if d_s = d_t
    feature_source: str = "final"  # final | raw (spec §2.4)
    kd_all_negatives: bool = True  # False: only the first negative column (SimpleX cap, spec §4.0)


_CHOICES = {"group_level": ("second", "first", "none"), "htd_mask": ("parity", "group_only"),
            "group_assignment": ("learned", "single", "entity")}


@register_distiller("htd")
class HTD(GumbelExpertDistiller):
    description = "hierarchical topology distillation: within-group entity and group-entity cosine relations"
    Config = HTDConfig
    backbone_defaults = {"simplex": {"kd_all_negatives": False}}
    dataset_defaults = {"gowalla/bprmf": {"alpha": 0.5}}     # KDs Gowalla-BPR config (spec §4.4)

    expert_count_field = "num_groups"

    def __init__(self, teacher: Teacher | None, student: Backbone, data: Dataset, cfg: HTDConfig) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(cfg, key) not in allowed:
                raise ValueError(f"htd {key} must be one of {allowed}, not {getattr(cfg, key)!r}")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ValueError(f"htd needs 0 <= alpha <= 1, not {cfg.alpha}")
        super().__init__(teacher, student, data, cfg)

    def ga_loss(self, side: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Σ_a ‖t_a − Σ_k z̃_{a,k} f_k(s_a)‖² (trains the group experts f and the assignment net v)."""
        return ((t - self.experts.reconstruct(side, s, t)) ** 2).sum()

    @torch.no_grad()
    def groups(self, t_users: torch.Tensor, t_items: torch.Tensor) -> torch.Tensor:
        """Group id of every batch entity (users then items); item ids offset by K_g."""
        n = len(t_users) + len(t_items)
        if self.cfg.group_assignment == "single":
            return torch.zeros(n, dtype=torch.long, device=t_users.device)
        if self.cfg.group_assignment == "entity":
            return torch.arange(n, device=t_users.device)
        return torch.cat([self.experts.assign("user", t_users), self.experts.assign("item", t_items)
                          + self.cfg.num_groups])

    def entity_level(self, s: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Within-group pairs only, so the n×n Grams are computed per group block (Σ_g n_g² instead of n²);
        with many tiny groups (e.g. one per entity) one masked n×n product is cheaper than the block loop."""
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
        _, counts = torch.unique(z, return_counts=True)
        if len(counts) > 4 * self.cfg.num_groups:
            return self._entity_block(s, t, z[:, None] == z[None, :])
        order = torch.argsort(z, stable=True)
        return sum(self._entity_block(s[b], t[b]) for b in torch.split(order, counts.tolist()))

    def _entity_block(self, s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            cos_t = t @ t.T
            if self.cfg.htd_mask == "parity":
                mask = cos_t > 0 if mask is None else mask & (cos_t > 0)
        return _MaskedGramLoss.apply(s, cos_t, mask)

    def group_level(self, s: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        _, inv, counts = torch.unique(z, return_inverse=True, return_counts=True)
        n_groups = len(counts)

        def prototypes(x: torch.Tensor) -> torch.Tensor:
            return x.new_zeros(n_groups, x.shape[1]).index_add(0, inv, x) / counts[:, None].to(x.dtype)

        with torch.no_grad():
            p_t = prototypes(t)
        p_s = prototypes(s if self.cfg.htd_proto_grad else s.detach())
        if self.cfg.group_level == "second":
            with torch.no_grad():
                cos_t = cosine_matrix(p_t, t)
            return ((cosine_matrix(p_s, s) - cos_t) ** 2).sum()
        with torch.no_grad():
            cos_t = cosine_matrix(p_t)
        return ((cosine_matrix(p_s) - cos_t) ** 2).sum()

    def loss(self, out: BackboneOutput) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        users, items = topology_entities(out, cfg.kd_all_negatives)
        s_user, s_item = student_features(self.student, out, cfg.feature_source)
        t_user, t_item = self.teacher.repr(cfg.feature_source)
        su, si, tu, ti = rows_of(s_user, users), rows_of(s_item, items), t_user[users], t_item[items]
        s, t = torch.cat([su, si]), torch.cat([tu, ti])
        z = self.groups(tu, ti)
        topo = self.entity_level(s, t, z)
        if cfg.group_level != "none":
            topo = topo + self.group_level(s, t, z)
        terms = {"kd_topo": cfg.alpha * topo}
        if cfg.alpha < 1:
            terms["kd_ga"] = (1 - cfg.alpha) * (self.ga_loss("user", su, tu) + self.ga_loss("item", si, ti))
        return terms


class _MaskedGramLoss(torch.autograd.Function):
    """Σ_ab m_ab (⟨s_a, s_b⟩ − c_ab)² for a symmetric C and mask m (HTD's within-group, cos_t > 0 pairs), with the
    gradient 4 R S, R = m ⊙ (S Sᵀ − C), written by hand.

    Autograd builds S Sᵀ, then four more n_g × n_g temporaries (difference, square, masked copy, and their
    gradients) and two products for the backward of S Sᵀ; here R is built in place and kept, and the backward is one
    product. The blocks are memory-bound (d_s = 20), so the passes over them are what costs."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, s: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None
                ) -> torch.Tensor:
        r = (s @ s.T).sub_(c)
        if mask is not None:
            r.masked_fill_(~mask, 0)
        ctx.save_for_backward(s, r)
        flat = r.view(-1)
        return torch.dot(flat, flat)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        s, r = ctx.saved_tensors
        return (r @ s).mul_(4 * g), None, None
