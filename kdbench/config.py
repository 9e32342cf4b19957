"""Resolved cell configurations: presets, profiles, ``--set`` overrides and TOML config files.

Precedence, lowest first: dataclass defaults < the spec's per-(dataset, backbone) preset (``presets.py``) < the
method's per-backbone defaults < the profile < ``--config FILE.toml`` ``[set]`` < ``--set KEY=VALUE``.

Override keys:
  ``teacher.KEY`` / ``student.KEY``  dim, lr, wd, batch_size, or any backbone hyperparameter of that role
  ``backbone.KEY``                   a backbone hyperparameter, for teacher and student (where the backbone has it)
  ``train.KEY``                      max_epochs, patience, eval_every, early_stop
  ``eval.KEY``                       mask_valid_in_test
  ``data.KEY``                       split_seed, format, allow_cold_items
  ``<method>.KEY``                   a hyperparameter of that method, e.g. ``freqd.alpha=0.3``
Values are parsed as JSON, then as Python literals (``ast.literal_eval``), else kept as strings; never ``eval``.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from .backbones import BACKBONES
from .datasets import DataConfig
from .evaluate import METRICS
from .methods import DISTILLERS
from .presets import preset
from .train import RoleConfig, TrainConfig

PROFILES: dict[str, dict] = {
    # CI and the embedded default: short, still with early stopping on validation
    "quick": {"max_epochs": 40, "patience": 6, "eval_every": 1},
    # the spec's protocol (§3.4)
    "paper": {"max_epochs": 1000, "patience": 30, "eval_every": 1},
    # the spec's protocol cut to what a 2-core machine can run for a whole grid: the same early stopping, an epoch
    # cap, and teachers of at most CPU_TEACHER_DIM dimensions (the spec's 2000-d LightGCN teacher does not fit)
    "cpu": {"max_epochs": 300, "patience": 30, "eval_every": 1},
}
CPU_TEACHER_DIM = 200
PROFILE_NOTES = {
    "quick": "quick: max 40 epochs, patience 6 (CI and the embedded default; not for publication)",
    "paper": "paper: the spec's protocol (max 1000 epochs, patience 30 on valid NDCG@20)",
    "cpu": f"cpu: the spec's protocol cut for 2-core machines: teacher dim min(spec, {CPU_TEACHER_DIM}), "
           "max 300 epochs, patience 30 on valid NDCG@20",
}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    mask_valid_in_test: bool = True   # spec §3.2 default; False = KDs parity


class ConfigError(ValueError):
    """A bad configuration value or key; the message names it and the valid choices."""


def parse_value(text: str) -> Any:
    for parser in (json.loads, ast.literal_eval):
        try:
            return parser(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set freqd.alpha=0.3")
        key, val = item.split("=", 1)
        if not key.strip() or "." not in key:
            raise ConfigError(f"--set {item!r}: the key must be SECTION.NAME, e.g. student.lr or freqd.alpha")
        out[key.strip()] = parse_value(val.strip())
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


RUN_KEYS = {"datasets", "backbones", "methods", "seeds", "profile", "out", "data_root", "cache_dir", "device",
            "set", "imports", "executor", "workers", "threads", "scheduler", "checkpoint_every"}


def load_config_file(path: str | Path) -> dict:
    """A TOML run file: top-level run options (as on the CLI, lists for datasets/backbones/methods/seeds) and a
    ``[set]`` table of overrides (dotted keys or nested tables)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    unknown = set(data) - RUN_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; valid: {sorted(RUN_KEYS)}")
    data["set"] = _flatten(data.get("set", {}))
    return data


def _coerce(value: Any, field: dataclasses.Field, key: str) -> Any:
    typ = field.type if isinstance(field.type, type) else {"int": int, "float": float, "bool": bool,
                                                           "str": str}.get(str(field.type), None)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is not None and not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r}: expected a value of type {getattr(typ, '__name__', typ)}")
    return value


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _apply(target: dict, cls: type, key: str, name: str, value: Any) -> None:
    fields = _fields(cls)
    if name not in fields:
        raise ConfigError(f"unknown key {key!r}; valid keys for {key.rsplit('.', 1)[0]}: {', '.join(sorted(fields))}")
    target[name] = _coerce(value, fields[name], key)


def resolve_data(overrides: dict[str, Any]) -> DataConfig:
    """The dataset options (``data.*`` overrides over the defaults), validated."""
    data = dataclasses.asdict(DataConfig())
    for key, value in overrides.items():
        if key.startswith("data."):
            _apply(data, DataConfig, key, key[5:], value)
    return DataConfig(**data)


def resolve_cell(dataset: str, backbone: str, method: str, seed: int, profile: str,
                 overrides: dict[str, Any]) -> dict:
    """The full configuration of one grid cell, as plain JSON data (hashed into the record)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    bb_cls = BACKBONES.get(backbone)
    m_cls = DISTILLERS.get(method)
    pre = preset(dataset, backbone)
    roles = {}
    for role in ("teacher", "student"):
        r = dataclasses.asdict(RoleConfig())
        r.update({k: v for k, v in pre[role].items() if k != "backbone"})
        bb = dataclasses.asdict(bb_cls.Config())
        bb.update(pre[role].get("backbone", {}))
        roles[role] = {**r, "backbone": bb}
    if profile == "cpu":
        roles["teacher"]["dim"] = min(roles["teacher"]["dim"], CPU_TEACHER_DIM)
    train = {**dataclasses.asdict(TrainConfig()), **PROFILES[profile]}
    data = dataclasses.asdict(resolve_data(overrides))
    evalc = dataclasses.asdict(EvalConfig())
    params = m_cls.default_params(backbone, dataset)
    bb_fields = _fields(bb_cls.Config)
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")   # method names may hold dots (freqd.nofilter), keys never do
        if section in ("teacher", "student"):
            if name in _fields(RoleConfig):
                _apply(roles[section], RoleConfig, key, name, value)
            elif name in bb_fields:
                _apply(roles[section]["backbone"], bb_cls.Config, key, name, value)
            else:
                raise ConfigError(f"unknown key {key!r}; valid: {', '.join(sorted(_fields(RoleConfig)))} or a "
                                  f"{backbone} hyperparameter ({', '.join(sorted(bb_fields))})")
        elif section == "backbone":
            if name in bb_fields:
                for role in roles.values():
                    _apply(role["backbone"], bb_cls.Config, key, name, value)
        elif section == "train":
            _apply(train, TrainConfig, key, name, value)
        elif section == "data":
            continue  # applied by resolve_data
        elif section == "eval":
            _apply(evalc, EvalConfig, key, name, value)
        elif section == method:
            _apply(params, m_cls.Config, key, name, value)
        elif section not in DISTILLERS:
            raise ConfigError(f"unknown override section {section!r} in {key!r}; use teacher, student, backbone, "
                              "train, eval, data or a method name")
    if train["early_stop"] not in METRICS:
        raise ConfigError(f"train.early_stop={train['early_stop']!r}: choose one of {', '.join(METRICS)}")
    return {"dataset": dataset, "data": data, "backbone": backbone, "teacher": roles["teacher"],
            "student": roles["student"], "train": {"profile": profile, **train}, "eval": evalc,
            "method": {"name": method, "params": params}, "seed": seed}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def protocol_text(cfg: dict) -> str:
    """The protocol a cell ran under, for records and table footnotes: its profile's note, plus every teacher,
    student, training, evaluation or data setting that an override moved away from that profile."""
    profile = cfg["train"]["profile"]
    base = resolve_cell(cfg["dataset"], cfg["backbone"], "student", cfg["seed"], profile, {})  # any method
    changed = []
    for section in ("teacher", "student", "train", "eval", "data"):
        if section in cfg:   # a teacher cell has no student
            default = _flat(base[section])
            changed += [f"{section}.{k}={v}" for k, v in _flat(cfg[section]).items() if default.get(k) != v]
    return PROFILE_NOTES[profile] + (f"; overridden: {', '.join(changed)}" if changed else "")


def check_overrides(overrides: dict[str, Any], backbones: list[str], methods: list[str]) -> None:
    """Keys that would apply to no cell of the run are errors (a typo must not be silently ignored)."""
    for key in overrides:
        section, _, name = key.rpartition(".")
        if section == "backbone" and not any(name in _fields(BACKBONES.get(b).Config) for b in backbones):
            raise ConfigError(f"unknown key {key!r}: no backbone of this run ({', '.join(backbones)}) has {name!r}")
        if section not in ("teacher", "student") and section in DISTILLERS and section not in methods:
            raise ConfigError(f"--set {key}: method {section!r} is not in this run's methods ({', '.join(methods)})")
