"""Run parameters: one flat YAML file (papermill-friendly) dispatched to the components' configs.

Each key belongs to exactly one component dataclass of cmtlib.configs (data, model, train,
experiments, report). Unknown keys are
refused with the nearest valid names, because papermill only warns about a misspelt parameter.
Relative paths in path-like keys are resolved against the current working directory when loaded.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from cmtlib.configs import DataConfig, ExperimentsConfig, ModelConfig, ReportConfig, TrainConfig
from cmtlib.errors import CmtError
from cmtlib.fileio import write_text

COMPONENTS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "experiments": ExperimentsConfig,
    "report": ReportConfig,
}
# Keys whose values are paths: resolved to absolute at load time so notebooks (which papermill runs
# from their own folder) and the command line agree.
# A params file may name another as its base (read first, then overridden); not a component key.
BASE_KEY = "base"
PATH_KEYS = frozenset({"data_root", "cache_dir", "run_dir", "reports_dir", "external"})


class ParamsError(CmtError, ValueError):
    """A params file or override that cannot be used; the message says what to change."""


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    experiments: ExperimentsConfig = field(default_factory=ExperimentsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # The params file's stem ('default' for params/default.yaml); names runs and reports.
    name: str = "default"
    source: str = ""

    def flat(self) -> dict[str, Any]:
        """All keys as one flat dict (the shape of a params file and of notebook parameters)."""
        out: dict[str, Any] = {}
        for comp in COMPONENTS:
            out.update(dataclasses.asdict(getattr(self, comp)))
        return out

    @property
    def run_name(self) -> str:
        return self.report.run_name or self.name


def key_owner() -> dict[str, str]:
    """Map every valid key to its component; fails loudly if two components claim one key."""
    owner: dict[str, str] = {}
    for comp, cls in COMPONENTS.items():
        for f in fields(cls):
            if f.name in owner:
                raise RuntimeError(f"params key {f.name} is defined by both {owner[f.name]} and {comp}")
            owner[f.name] = comp
    return owner


def valid_keys() -> list[str]:
    return sorted(key_owner())


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `--set report_notebooks=01`: one item (YAML made it the number 1)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{key} must be a list, got {value!r}")
        (item,) = typing.get_args(hint) or (str,)
        return [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
            return value.lower() in {"true", "yes", "1"}
        raise ParamsError(f"{key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())):
            raise ParamsError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ParamsError(f"{key} must be a number, got {value!r}") from None
    if hint is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ParamsError(f"{key} must be text, got {value!r}")
        return str(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build_params(values: dict[str, Any], name: str = "default", source: str = "", base: str | os.PathLike | None = None) -> Params:
    """Params from a flat dict; refuses unknown keys and wrongly typed values."""
    owner = key_owner()
    unknown = [k for k in values if k not in owner]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, owner, n=3)
            hints.append(f"{k!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = f" in {source}" if source else ""
        raise ParamsError(f"unknown parameter(s){where}: {'; '.join(hints)}. Valid keys: {', '.join(sorted(owner))}")
    per_comp: dict[str, dict[str, Any]] = {c: {} for c in COMPONENTS}
    base_dir = Path(base) if base is not None else Path.cwd()
    for key, value in values.items():
        comp = owner[key]
        value = _coerce(key, value, _hints(COMPONENTS[comp])[key])
        if key in PATH_KEYS and isinstance(value, list):
            value = [v if Path(v).is_absolute() else str((base_dir / v).resolve()) for v in value]
        elif key in PATH_KEYS and value and not Path(value).is_absolute():
            value = str((base_dir / value).resolve())
        per_comp[comp][key] = value
    p = Params(**{c: COMPONENTS[c](**kw) for c, kw in per_comp.items()}, name=name, source=source)
    if p.data.data_kind != "synthetic" and not (p.data.data_root or p.data.cache_dir):
        raise ParamsError(f"data_kind={p.data.data_kind} needs data_root (a manifest or collection folder) or cache_dir")
    return p


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """`key=value` strings (the `--set` flag) -> dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ParamsError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def read_params_file(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A params file's flat values; a `base: other.yaml` key (relative to this file) is read first,
    so a variant (an ablation subset, a seed) states only what differs from its base."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    if path in _seen:
        raise ParamsError(f"params files include each other in a loop: {' -> '.join(map(str, _seen + (path,)))}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ParamsError(f"{path} must hold a flat mapping of key: value, got {type(values).__name__}")
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise ParamsError(f"{path}: params are flat key: value pairs; {nested} hold nested mappings")
    base = values.pop(BASE_KEY, None)
    if base:
        merged = read_params_file(path.parent / str(base), _seen + (path,))
        merged.update(values)
        values = merged
    return values


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | Iterable[str] = ()) -> Params:
    """Load a params YAML (or the defaults when path is None) and apply overrides."""
    values: dict[str, Any] = {}
    name, source = "default", ""
    if path is not None:
        values = read_params_file(path)
        name, source = Path(path).stem, str(path)
    if not isinstance(overrides, dict):
        overrides = parse_overrides(overrides)
    values.update(overrides)
    return build_params(values, name=name, source=source)


def dump_params(p: Params, path: str | os.PathLike) -> Path:
    """Write the resolved flat params (every key, defaults included) as YAML, atomically."""
    return write_text(path, yaml.safe_dump(p.flat(), sort_keys=True))
