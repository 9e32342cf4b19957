"""Builders shared by the distiller tests: a teacher/student/distiller triple and a fixed batch on tiny data."""
import dataclasses

import torch

from kdbench.backbones import BACKBONES
from kdbench.methods import DISTILLERS
from kdbench.teacher import Teacher


def make_distiller(tiny, backbone, method, seed=0, t_dim=16, s_dim=4, teacher_std=None, **params):
    """(teacher, student, distiller) on ``tiny``; SimpleX with 8 negatives so that tests stay small."""
    B = BACKBONES.get(backbone)
    cfg = dataclasses.replace(B.Config(), num_ns=8) if backbone == "simplex" else B.Config()
    torch.manual_seed(seed)
    t_cfg = cfg if teacher_std is None else dataclasses.replace(cfg, init_std=teacher_std)
    teacher = Teacher(B(tiny, t_dim, t_cfg), tiny)
    student = B(tiny, s_dim, cfg)
    cls = DISTILLERS.get(method)
    return teacher, student, cls(teacher, student, tiny, cls.Config(**{**cls.default_params(backbone), **params}))


def make_batch(tiny, student, n=32, seed=0):
    """(users, positives, negatives) drawn from the training pairs with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(tiny.train), (n,), generator=g)
    pairs = torch.from_numpy(tiny.train)[idx]
    neg = torch.randint(tiny.n_items, (n, student.n_neg), generator=g)
    return pairs[:, 0], pairs[:, 1], neg
