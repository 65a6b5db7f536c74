"""One typed view of a params file: nested sections with attribute access, a profile, stable hashes.

A params file (`params/*.yaml`) is a model × algorithm × scale. Its top-level `profiles:` block holds named overrides;
`smoke` is the tiny profile CI runs. `profile="auto"` means `$RLVR_PROFILE` when set, else `default` (no overrides),
so CI and a user's "Run All" execute the very same cells.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from .paths import resolve, stable_hash

DEFAULT_PARAMS = "params/default.yaml"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-6` (no dot) as a float, as a researcher writes learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A params file or override names an unknown knob or has a bad value."""


class Section(dict):
    """A dict whose keys are also attributes (`cfg.rl.lr`)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no parameter {key!r} (have: {', '.join(self)})") from None

    def to_dict(self) -> dict:
        return {k: v.to_dict() if isinstance(v, Section) else copy.deepcopy(v) for k, v in self.items()}


def _wrap(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return Section({k: _wrap(v) for k, v in obj.items()})
    return obj


def _merge(base: dict, over: Mapping, where: str, strict: bool = True) -> None:
    """Recursively merge `over` into `base`; with `strict`, a key `base` lacks is an error naming `where`."""
    for key, val in over.items():
        if key not in base:
            if strict:
                raise ConfigError(f"{where}: unknown parameter {key!r} (known: {', '.join(sorted(base))})")
            base[key] = copy.deepcopy(val)
        elif isinstance(base[key], dict) and isinstance(val, Mapping):
            _merge(base[key], val, f"{where}.{key}", strict)
        else:
            base[key] = copy.deepcopy(val)


def _dotted(overrides: Mapping[str, Any]) -> dict:
    """{"rl.lr": 1e-5} -> {"rl": {"lr": 1e-5}}."""
    nested: dict = {}
    for key, val in overrides.items():
        node = nested
        *heads, last = key.split(".")
        for h in heads:
            node = node.setdefault(h, {})
        node[last] = val
    return nested


class Config(Section):
    """The resolved parameters of one run: `name`, `profile`, the sections, and where they came from."""

    def hash(self, *sections: str) -> str:
        """Stable hash of the named sections (all of them when none named)."""
        keys = sections or [k for k in self if k not in ("name", "profile", "source")]
        return stable_hash({k: self[k] for k in keys})

    @property
    def run_name(self) -> str:
        return self.name if self.profile == "default" else f"{self.name}-{self.profile}"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load(params_file: str | os.PathLike = DEFAULT_PARAMS, profile: str = "auto",
         overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a params file, apply a profile and dotted overrides, return a `Config`.

    A params file other than the default inherits every knob from `params/default.yaml` and may only change knobs that
    exist there, so a typo is an error rather than a silently ignored setting.
    """
    path = resolve(params_file)
    data = _read_yaml(path)
    default_path = resolve(DEFAULT_PARAMS)
    if path.resolve() != default_path.resolve():
        base = _read_yaml(default_path)
        base.pop("profiles", None)
        base.pop("name", None)
        profiles = data.pop("profiles", {}) or {}
        name = data.pop("name", path.stem)
        _merge(base, data, str(path))
        data = {**base, "profiles": profiles, "name": name}
    profiles = data.pop("profiles", {}) or {}
    name = data.pop("name", path.stem)
    if profile == "auto":
        profile = os.environ.get("RLVR_PROFILE", "default")
    if profile != "default":
        if profile not in profiles:
            raise ConfigError(f"{path}: no profile {profile!r} (have: default, {', '.join(profiles)})")
        _merge(data, profiles[profile], f"{path} profiles.{profile}")
    if overrides:
        _merge(data, _dotted(overrides), "overrides")
    cfg = Config(_wrap(data))
    cfg.update(name=name, profile=profile, source=str(path))
    return cfg
