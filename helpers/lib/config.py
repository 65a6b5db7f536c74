"""One typed view of a params file: nested sections with attribute access, a profile, stable hashes.

A params file (`params/*.yaml`) is a model × algorithm × scale. Its top-level `profiles:` block holds named overrides;
`smoke` is the tiny profile CI runs. `profile="auto"` means `$RLVR_PROFILE` when set, else `default` (no overrides),
so CI and a user's "Run All" execute the very same cells.

Every value is checked once, where it enters (the params file, the profile, the overrides, `derive`): its type is the
type of its value in `params/default.yaml` (an int is accepted for a float), `RULES` adds ranges and fixed choices (and
the type of knobs whose default is null), and a section stays a section.
"""

from __future__ import annotations

import copy
import numbers
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from helpers.lib.cache import stable_hash
from helpers.lib.paths import resolve

DEFAULT_PARAMS = "params/default.yaml"
META = ("name", "profile", "source")  # what a Config carries besides the knobs
UNHASHED = ("batch",)  # sections that change how notebooks run, not what they compute


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-6` (no dot) as a float, as a researcher writes learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A params file or override names an unknown knob or has a bad value."""


# ---------------------------------------------------------------------------------------------------------- rules


class Rule(NamedTuple):
    """What one knob accepts: values of the right type (`is_type`) that pass `fits` (a range, a choice, the items)."""

    is_type: Callable[[Any], bool]
    text: str  # all of it, e.g. "an integer ≥ 1"
    fits: Callable[[Any], bool] = lambda v: True
    bound: str = ""  # `fits` alone, e.g. "at least 1" (default: `text`)
    many: str = ""  # a list of them, e.g. "integers ≥ 1" (default: `text`)

    def __or__(self, other: Rule) -> Rule:
        return Rule(
            lambda v: self.is_type(v) or other.is_type(v),
            f"{self.text} or {other.text}",
            lambda v: self.is_type(v) and self.fits(v) or other.is_type(v) and other.fits(v),
            many=f"{self.many or self.text} or {other.many or other.text}",
        )

    def complaint(self, key: str, value: Any) -> str | None:
        """ "`key` must be …, not …", or None when `value` is allowed."""
        if not self.is_type(value):
            return f"{key} must be {self.text}, not {_shown(value, typed=False)}"
        if not self.fits(value):
            return f"{key} must be {self.bound or self.text}, not {_shown(value)}"
        return None


def _shown(v: Any, typed: bool = True) -> str:
    """A value as the user wrote it: YAML's true / false / null, a string named as one where a string is wrong."""
    if v is None or isinstance(v, bool):
        return {None: "null", True: "true", False: "false"}[v]
    if isinstance(v, Mapping):
        return f"a section ({dict(v)!r})"
    return f"the string {v!r}" if isinstance(v, str) and not typed else repr(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def number(ge=None, gt=None, le=None, lt=None, integer: bool = False) -> Rule:
    """An int (`integer`) or a number (an int counts) within the given bounds."""
    lo = (gt, "(", "greater than", ">") if gt is not None else (ge, "[", "at least", "≥")
    hi = (lt, ")", "less than", "<") if lt is not None else (le, "]", "at most", "≤")
    if lo[0] is not None and hi[0] is not None:
        bound = sym = f"in {lo[1]}{lo[0]:g}, {hi[0]:g}{hi[1]}"
    else:
        side = lo if lo[0] is not None else hi
        bound, sym = (f"{side[2]} {side[0]:g}", f"{side[3]} {side[0]:g}") if side[0] is not None else ("", "")
    noun, many = ("an integer", "integers") if integer else ("a number", "numbers")

    def fits(v) -> bool:
        return (ge is None or v >= ge) and (gt is None or v > gt) and (le is None or v <= le) and (lt is None or v < lt)

    return Rule(_is_int if integer else _is_num, f"{noun} {sym}".strip(), fits, bound, f"{many} {sym}".strip())


def matching(pattern: str, text: str) -> Rule:
    """A string that matches `pattern` whole."""
    return Rule(lambda v: isinstance(v, str), text, lambda v: re.fullmatch(pattern, v) is not None)


def one_of(*choices: str) -> Rule:
    """One of a fixed set of strings."""
    listed = ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]
    return matching("|".join(map(re.escape, choices)), listed)


def items(rule: Rule, nonempty: bool = False) -> Rule:
    """A list of values `rule` allows."""
    return Rule(
        lambda v: isinstance(v, (list, tuple)),
        f"a {'non-empty ' * nonempty}list of {rule.many or rule.text}",
        lambda v: (len(v) > 0 or not nonempty) and all(rule.is_type(x) and rule.fits(x) for x in v),
    )


def pair(rule: Rule) -> Rule:
    """[a, b], both allowed by `rule`."""
    of = rule.many or rule.text
    return Rule(
        lambda v: isinstance(v, (list, tuple)),
        f"a pair of {of}",
        lambda v: len(v) == 2 and all(rule.is_type(x) and rule.fits(x) for x in v),
        many=f"pairs of {of}",
    )


ANY = Rule(lambda v: True, "anything")
NULL = Rule(lambda v: v is None, "null")
BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
TEXT = Rule(lambda v: isinstance(v, str), "a string", many="strings")
PATH = Rule(lambda v: isinstance(v, (str, os.PathLike)), "a path", lambda v: str(v) != "")
DATASET = Rule(lambda v: isinstance(v, (str, os.PathLike)), "a data file or a hub dataset id", lambda v: str(v) != "")
INT, NUM = number(integer=True), number()
COUNT, SEED = number(ge=1, integer=True), number(ge=0, integer=True)
POSITIVE, NONNEG = number(gt=0), number(ge=0)
FRACTION, SHARE = number(gt=0, le=1), number(ge=0, le=1)
# fixed choices copied from the code that reads them (tests/test_params_files.py checks they agree); linearity.MODULES
MODULES = one_of(
    "embed",
    "q",
    "k",
    "v",
    "o",
    "q_norm",
    "k_norm",
    "input_norm",
    "gate",
    "up",
    "down",
    "post_attn_norm",
    "final_norm",
    "head",
)
NORMS = one_of("copy-from-t1", "extrapolate")  # helpers.lib.extrapolation.NORM_POLICIES
FITS = one_of("linear", "polynomial", "sinusoid")  # helpers.lib.relex.FITS

# dotted key -> what it accepts; a knob not listed accepts any value of its default's type
RULES: dict[str, Rule] = {
    "seed": SEED,
    "device": matching(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, cuda, cuda:N or mps"),
    "trajectory.dir": PATH | NULL,
    "trajectory.base": PATH | NULL,
    "task.kind": one_of("arithmetic", "math"),
    "task.operands": COUNT,
    "task.max_value": COUNT,
    "task.slip": SHARE,
    "task.ops": matching(r"[+-]+", "a non-empty string of + and -"),
    "task.train_size": COUNT,
    "task.heldout_size": COUNT,
    "task.seed": SEED,
    "math.dataset": DATASET | NULL,
    "math.train_dataset": DATASET | NULL,
    "math.limit": COUNT | NULL,
    "math.train_limit": COUNT | NULL,
    "model.arch": one_of("llama"),  # helpers.lib.tiny.ARCHS
    **{
        f"model.{k}": COUNT
        for k in ("hidden_size", "heads", "kv_heads", "layers", "intermediate_size", "max_positions")
    },
    "sft.base_steps": COUNT,
    "sft.lr": POSITIVE,
    "sft.batch": COUNT,
    "sft.optimizer": one_of("adamw", "sgd"),  # helpers.lib.training.OPTIMIZERS
    "rl.algorithm": one_of("grpo", "gspo", "reinforce++"),  # helpers.lib.training.ALGORITHMS
    "rl.optimizer": one_of("adamw", "sgd"),
    "rl.lr": POSITIVE,
    "rl.batch": COUNT,
    "rl.rollouts": COUNT,
    "rl.steps": COUNT,
    "rl.save_every": COUNT,
    "rl.seed": SEED,
    "rl.seeds": COUNT,
    "rl.epsilon": NONNEG,
    "rl.epsilon_high": NONNEG,
    "rl.temperature": POSITIVE,
    "rl.max_completion_length": COUNT,
    "eval.backend": one_of("hf", "vllm"),  # helpers.lib.backends.BACKENDS
    "eval.k": COUNT,
    "eval.temperature": NONNEG,
    "eval.top_p": FRACTION,
    "eval.max_new_tokens": COUNT,
    "eval.seed": SEED,
    "eval.batch_size": COUNT,
    "eval.heldout_during_training": COUNT,
    "claims.level": number(gt=0, lt=1),
    "claims.bootstrap": COUNT,
    "claims.accuracy_margin": NONNEG,
    "claims.r2_margin": NONNEG,
    "claims.r2_threshold": number(gt=0, lt=1) | NULL,
    "claims.split_seed": SEED,
    "weight_linearity.entries.fraction": FRACTION,
    "weight_linearity.entries.min_samples": COUNT,
    "weight_linearity.entries.min_range": one_of("auto") | NONNEG,
    "weight_linearity.entries.min_distinct": COUNT,
    "weight_linearity.examples": COUNT,
    **{
        f"output_linearity.{k}": COUNT
        for k in (
            "prompts",
            "samples_per_prompt",
            "max_new_tokens",
            "batch_size",
            "activation_positions",
            "activation_dims",
            "top_tokens",
            "curves",
        )
    },
    "output_linearity.temperature": NONNEG,
    "output_linearity.top_p": FRACTION,
    "output_linearity.min_change": NONNEG,
    "relex.t_cut_fractions": items(FRACTION, nonempty=True),
    "relex.min_points": COUNT,
    "relex.horizons": items(POSITIVE),
    "relex.rank": COUNT,
    "relex.fit": FITS,
    "relex.degree": COUNT,
    "relex.window": COUNT | NULL,
    "relex.norms": NORMS,
    "relex.ablation.t_cut_fraction": FRACTION,
    "relex.ablation.ranks": items(COUNT),
    "relex.ablation.fits": items(FITS),
    "relex.ablation.windows": items(COUNT),
    "relex.ablation.horizons": items(POSITIVE),
    "relex.denoise.ranks": items(COUNT, nonempty=True),
    "relex.denoise.steps": COUNT | NULL,
    "relex.representative": items(MODULES),
    "relex.eval_items": COUNT | NULL,
    "relex.chunk_mb": COUNT,
    "extrapolation.norms": NORMS,
    "extrapolation.weight_pairs": items(pair(SHARE)),
    "extrapolation.weight_targets": items(POSITIVE),
    "extrapolation.logit_pair": pair(SHARE),
    "extrapolation.logit_alphas": items(NUM),
    "extrapolation.eval_items": COUNT | NULL,
    "origin.decomposition.layers": items(INT) | NULL,
    "origin.decomposition.modules": items(MODULES, nonempty=True),
    "origin.decomposition.tokens": COUNT | NULL,
    "origin.steps": COUNT | NULL,
    "origin.save_every": COUNT | NULL,
    "origin.sft.lr": POSITIVE | NULL,
    "origin.sft.batch": COUNT | NULL,
    "origin.sft.demonstrations": one_of("correct", "task"),
    "origin.snr_db": items(NUM | one_of("signal=0")),
    "origin.noise_seed": SEED,
    "origin.sgd_lr": one_of("auto") | POSITIVE,
    "origin.lr_scales": items(POSITIVE),
    "rl_extra.configs": items(pair(SEED)),
    "rl_extra.paper_steps": COUNT | NULL,
    "rl_extra.norms": NORMS,
    "rl_extra.optimizer": one_of("reset", "keep"),  # helpers.lib.rl_extra.OPTIMIZER_POLICIES
    "rl_extra.ablation": SEED | NULL,
    "rl_extra.target_fractions": items(FRACTION),
    "rl_extra.budgets": items(COUNT),
    "monitor.every": COUNT,
    "monitor.window": number(ge=3, integer=True),
    "monitor.fraction": FRACTION,
    "monitor.min_samples": COUNT,
    "monitor.budget_mb": POSITIVE,
    "adaptive.every": COUNT,
    "adaptive.window": number(ge=3, integer=True),
    "adaptive.min_weight_r2": number(le=1),
    "adaptive.min_rank1_ev": SHARE,
    "adaptive.min_cosine": number(ge=-1, le=1),
    "adaptive.betas": items(number(gt=1)),
    "adaptive.probe_prompts": COUNT,
    "adaptive.noise_z": NONNEG,
    "adaptive.rollback_after": COUNT,
    "adaptive.cooldown": COUNT | NULL,
    "adaptive.optimizer": one_of("reset", "keep"),
    "adaptive.norms": NORMS,
    "adaptive.budgets": items(FRACTION),
    "robustness.notebooks": items(TEXT | INT),
    "robustness.kernel_threads": COUNT | NULL,
    "batch.cell_timeout": POSITIVE,
}
LIST = Rule(lambda v: isinstance(v, (list, tuple)), "a list")
_BY_TYPE = {bool: BOOL, int: INT, float: NUM, str: TEXT, list: LIST}


def rule_of(key: str, default: Any) -> Rule:
    """The rule of the dotted `key` whose value in params/default.yaml is `default`."""
    return RULES.get(key) or _BY_TYPE.get(type(default), ANY)


def _complaints(layer: Any, schema: Mapping, prefix: str = "") -> list[str]:
    """What is wrong with the values of `layer` (a nested dict of knobs) against `schema` (params/default.yaml's);
    keys `schema` lacks are left to `_merge`, which names them."""
    if not isinstance(layer, Mapping):
        return [f"expected a mapping of parameters, not {_shown(layer)}"]
    out = []
    for key, val in layer.items():
        if key not in schema:
            continue
        dotted, default = f"{prefix}{key}", schema[key]
        if isinstance(default, Mapping) and isinstance(val, Mapping):
            out += _complaints(val, default, f"{dotted}.")
        elif isinstance(default, Mapping):
            knobs = ", ".join(f"{dotted}.{k}" for k in list(default)[:3])
            out.append(
                f"{dotted} is a section ({knobs}, …): set one of its knobs, not the whole section to {_shown(val)}"
            )
        else:
            out += filter(None, [rule_of(dotted, default).complaint(dotted, val)])
    return out


# ------------------------------------------------------------------------------------------------------- sections


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


def _check(layer: Any, where: str, schema: Mapping) -> None:
    """Every bad value of `layer` at once, in one error naming `where`."""
    bad = _complaints(layer, schema)
    if bad:
        raise ConfigError(f"{where}: {'; '.join(bad)}")


def _apply(data: dict, layer: Any, where: str, schema: Mapping) -> None:
    """Check `layer`, then merge it into `data`."""
    _check(layer, where, schema)
    _merge(data, layer, where)


def _dotted(overrides: Mapping[str, Any], where: str = "overrides") -> dict:
    """{"rl.lr": 1e-5} -> {"rl": {"lr": 1e-5}}."""
    nested: dict = {}
    for key, val in overrides.items():
        node = nested
        *heads, last = key.split(".")
        for i, h in enumerate(heads):
            node = node.setdefault(h, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key} and {'.'.join(heads[: i + 1])} are both set")
        node[last] = val
    return nested


class Config(Section):
    """The resolved parameters of one run: `name`, `profile`, the sections, and where they came from."""

    def hash(self, *sections: str) -> str:
        """Stable hash of the named sections (all of them when none named)."""
        keys = sections or [k for k in self if k not in META and k not in UNHASHED]
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


def _defaults() -> tuple[dict, dict, str]:
    """params/default.yaml: (its knobs, its profiles, its name)."""
    data = _read_yaml(resolve(DEFAULT_PARAMS))
    return data, data.pop("profiles", None) or {}, data.pop("name", "default")


def load(
    params_file: str | os.PathLike = DEFAULT_PARAMS, profile: str = "auto", overrides: Mapping[str, Any] | None = None
) -> Config:
    """Read a params file, apply a profile and dotted overrides, return a `Config`; every value is checked.

    A params file other than the default inherits every knob from `params/default.yaml` and may only change knobs that
    exist there, so a typo is an error rather than a silently ignored setting.
    """
    path = resolve(params_file)
    schema, profiles, name = _defaults()
    _check(schema, str(resolve(DEFAULT_PARAMS)), schema)
    data = copy.deepcopy(schema)
    if path.resolve() != resolve(DEFAULT_PARAMS).resolve():
        own = _read_yaml(path)
        profiles, name = own.pop("profiles", None) or {}, own.pop("name", path.stem)
        _apply(data, own, str(path), schema)
    if profile == "auto":
        profile = os.environ.get("RLVR_PROFILE", "default")
    if profile != "default":
        if profile not in profiles:
            raise ConfigError(f"{path}: no profile {profile!r} (have: default, {', '.join(profiles)})")
        _apply(data, profiles[profile] or {}, f"{path} profiles.{profile}", schema)
    if overrides:
        _apply(data, _dotted(overrides), "overrides", schema)
    cfg = Config(_wrap(data))
    cfg.update(name=name, profile=profile, source=str(path))
    return cfg


def derive(cfg: Config, changes: Mapping[str, Any]) -> Config:
    """A copy of `cfg` with the dotted `changes` ({"rl.lr": 1e-5}) applied, checked as strictly as `load` checks."""
    where = f"{cfg.get('source', 'config')} (derived)"
    data = {k: v for k, v in cfg.to_dict().items() if k not in META}
    _apply(data, _dotted(changes, where), where, _defaults()[0])
    out = Config(_wrap(data))
    out.update({k: cfg[k] for k in META if k in cfg})
    return out
