"""The run spec and the sweep spec: what one run computes, validated with pydantic, loaded from YAML.

A :class:`RunSpec` names a prepared dataset folder (``samples.parquet`` + ``dataset.json`` from
``fairfm datasets prepare``), the model and how it is used (``usage`` with per-usage ``hparams``), an optional
mitigation ``method``, the seed, the threshold policy and the bootstrap size. :meth:`RunSpec.resolve` turns it
into the canonical, fully-defaulted dictionary that the results store hashes into a run id.

Hyper-parameters are validated per usage: each usage's module registers its pydantic model with
:func:`fairfm.usages.register_usage`, so adding a usage is one new module and no edit elsewhere. Every validation
error becomes a single-line :class:`fairfm.errors.InputError` naming the file and the field path, e.g.
``spec.yaml: hparams.lr: Input should be greater than 0``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Optional

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from fairfm.errors import InputError
from fairfm.usages import HParams, TrainHParams, get_usage, list_usages
from fairfm.usages.base import _NAME, _Strict
# The built-in usages' hyper-parameter models, re-exported where callers have always found them.
from fairfm.usages.clip_adaptation import ClipAdapterHParams, PrototypeHParams  # noqa: F401
from fairfm.usages.finetune import (AdapterHParams, BitFitHParams, FullFinetuneHParams, LoraHParams,  # noqa: F401
                                    VptHParams)  # fmt: skip
from fairfm.usages.linear_probe import LinearProbeHParams  # noqa: F401
from fairfm.usages.sam_prompt import SamPromptHParams  # noqa: F401
from fairfm.usages.zero_shot import ZeroShotHParams  # noqa: F401

#: Fields that say *where* or *how safely* a run executes, not *what* it computes: recorded in meta.json, left out
#: of the hash, so a finished CPU run is found again when the same spec is asked for on a GPU machine.
EXECUTION_FIELDS = ("device", "trust_checkpoint")

_SAMPLES_FILE = "samples.parquet"
_MANIFEST_FILE = "dataset.json"


# ---------------------------------------------------------------------------------------------------------------
# Per-usage hyper-parameters: each usage's own module in fairfm.usages registers its model (importing the package
# registers every built-in usage).


def hparams_model(usage: str) -> type[HParams]:
    """The hyper-parameter model of the registered usage ``usage`` (an InputError naming the known usages)."""
    return get_usage(usage).hparams


# ---------------------------------------------------------------------------------------------------------------
# The run spec


def _prefixed(exc: ValidationError, prefix: tuple[Any, ...], title: str) -> ValidationError:
    details = [
        InitErrorDetails(type=e["type"], loc=prefix + tuple(e["loc"]), input=e["input"], ctx=e.get("ctx", {}))
        for e in exc.errors()
    ]
    return ValidationError.from_exception_data(title, details)


#: Short names accepted wherever a usage is named (spec files, flags, sweeps); resolved to the canonical name before
#: anything is hashed, so ``usage: lp`` and ``usage: linear_probe`` are the same run.
USAGE_ALIASES = {
    "lp": "linear_probe", "probe": "linear_probe", "zs": "zero_shot", "ft": "full_finetune", "full": "full_finetune",
    "finetune": "full_finetune", "sam": "sam_prompt",
}  # fmt: skip


def canonical_usage(name: str) -> str:
    """The registered usage meant by ``name``: exact name, alias (``lp``, ``zs``, ``ft``…), any case, ``-`` for ``_``.

    Raises ValueError listing the usages and aliases when nothing matches.
    """
    key = str(name).strip().lower().replace("-", "_")
    key = USAGE_ALIASES.get(key, key)
    known = list_usages()
    if key not in known:
        aliases = ", ".join(f"{alias}={usage}" for alias, usage in USAGE_ALIASES.items() if usage in known)
        raise ValueError(f"unknown usage {name!r}; choose one of: {', '.join(list_usages())} (aliases: {aliases})")
    return key


def _model_family(name: str) -> str | None:
    """The family of a registered model card; None for a name the registry does not know (reported elsewhere)."""
    from fairfm.models.registry import get_model  # lazy: no torch, only the cards

    try:
        return get_model(name).family
    except InputError:
        return None


def _is_dataset_name(value: Any, folder: Path) -> bool:
    """True for a bare registered dataset name (``dataset: chexpert``) that is not also a path under ``folder``; such
    a value is kept as written instead of being read relative to the spec file (it is prepared on the fly)."""
    if not isinstance(value, str) or len(Path(value).parts) != 1 or not _NAME.match(value):
        return False
    if (folder / value).exists():
        return False
    from fairfm.data.registry import list_datasets  # lazy: discovering the sources imports pandas

    return value in {card.name for card in list_datasets()}


class RunSpec(_Strict):
    """One run: dataset × model × usage × method × hyper-parameters × seed."""

    dataset: Path = Field(description="a prepared dataset folder (samples.parquet + dataset.json)")
    root: Optional[Path] = Field(None, description="image root (null: the root recorded in dataset.json)")
    view: Optional[str] = Field(None, description="which image of a multi-view sample the model reads: null = the "
                                "'path' column, 'oct' = 'path_oct' (e.g. GF3300's OCT volume beside its fundus)")
    tasks: Optional[list[str]] = Field(None, description="label columns (null: every label_* column)")
    attributes: Optional[list[str]] = Field(None, description="sensitive attributes (null: every group_* column)")
    split: Optional[str] = Field(None, description="split policy (null: the one recorded in dataset.json)")
    model: str
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="constructor overrides for the model (e.g. sizes of a small test model)"
    )
    checkpoint: Optional[Path] = None
    trust_checkpoint: bool = False
    usage: str = Field(description="how the model is used (see list_usages())")
    method: Optional[str] = Field(None, description="mitigation method (null: none)")
    method_params: dict[str, Any] = Field(default_factory=dict)
    hparams: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(0, ge=0, description="training and bootstrap seed (a seed sweep varies these only)")
    split_seed: Optional[int] = Field(None, ge=0, description="seed of the train/val/test split (null: the one "
                                      "recorded in dataset.json; 0 when a dataset is prepared by name)")
    threshold: str = "best_f1@val"
    bootstrap: int = Field(1000, ge=0)
    device: str = "auto"

    @field_validator("view", mode="before")
    @classmethod
    def _view_name(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.removeprefix("path_")
            return None if value in ("", "path") else value  # 'path' is the default view, spelled out
        return value

    @field_validator("model", "split", "method", "view")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError(f"{value!r} is not a valid name (letters, digits, '_', '-', '.')")
        return value

    @field_validator("tasks", "attributes")
    @classmethod
    def _names(cls, value: list[str] | None, info) -> list[str] | None:
        if value is None:
            return None
        prefix = "label_" if info.field_name == "tasks" else "group_"
        names = [str(v).removeprefix(prefix) for v in value]
        if not names:
            raise ValueError("empty list (leave the field out to use every column)")
        seen = set()
        for name in names:
            if name in seen:
                raise ValueError(f"{name!r} listed twice")
            seen.add(name)
        return names

    @field_validator("threshold", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> str:
        from fairfm.metrics.thresholds import parse_policy

        try:
            return parse_policy(str(value)).name
        except InputError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("usage")
    @classmethod
    def _known_usage(cls, value: str) -> str:
        return canonical_usage(value)  # aliases (lp, zs, ft…) become the canonical name before any hashing

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device {value!r}: choose auto, cpu or cuda (cuda:N for one GPU)")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _typed_hparams(cls, data: Any, handler) -> "RunSpec":
        # The hyper-parameters depend on ``usage``; validate them with that usage's model and report errors
        # under ``hparams.<field>``, then keep the fully-defaulted dictionary.
        spec = handler(data)
        usage = get_usage(spec.usage)
        family = _model_family(spec.model)
        refusal = usage.family_refusal(spec.model, family) if family is not None else None
        if refusal is not None and usage.model_family is not None:
            # Before the hyper-parameters: another usage's fields would otherwise be reported as unknown. A usage
            # open to any image encoder is refused a promptable segmenter by the same rule in runner.preflight.
            raise ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(
                type="value_error", loc=("usage",), input=spec.usage, ctx={"error": refusal})])  # fmt: skip
        try:
            typed = usage.hparams.model_validate(spec.hparams)
        except ValidationError as exc:
            raise _prefixed(exc, ("hparams",), cls.__name__) from None
        spec.hparams = typed.model_dump(mode="json")
        if spec.method is None and spec.method_params:
            raise ValidationError.from_exception_data(cls.__name__, [InitErrorDetails(
                type="value_error", loc=("method_params",), input=spec.method_params,
                ctx={"error": "method_params given without a method"})])  # fmt: skip
        if spec.method is not None:
            spec.method_params = _validated_method_params(cls.__name__, spec)
            _method_threshold(cls.__name__, spec)
        return spec

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "spec") -> "RunSpec":
        """Validate a mapping; errors become one-line InputErrors naming ``source`` and the field path."""
        if not isinstance(data, Mapping):
            raise InputError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise spec_error(exc, source) from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "RunSpec":
        """Read a spec from YAML; relative paths in it are taken relative to the YAML file's folder (a bare
        registered dataset name such as ``dataset: chexpert`` stays a name)."""
        path = Path(path)
        data = _read_yaml(path)
        return cls.from_dict(_relative_to(data, path.parent), source=str(path))

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None, *,
             origins: Mapping[str, str] | None = None, flags: Mapping[str, str] | None = None) -> "RunSpec":
        """A spec from YAML (optional) with command-line values on top.

        ``overrides`` maps dotted field paths to values (``{"hparams.lr": 1e-3, "seed": 2}``), e.g. from
        :func:`parse_assignments`. An error in an overridden field names the command line, any other the file.
        ``origins`` maps an override key to the flag that gave it (``{"seed": "--seed x"}``): an error in that value
        is reported as ``--seed x: message``. ``flags`` maps a field to the flag that sets it, named in the message
        when a required field is missing.
        """
        data: dict[str, Any] = {}
        source = "command line"
        if path is not None:
            path = Path(path)
            loaded = _read_yaml(path)
            if not isinstance(loaded, Mapping):
                raise InputError(f"{path}: expected a mapping of fields, got {type(loaded).__name__}")
            data, source = _relative_to(loaded, path.parent), str(path)
        overrides = dict(overrides or {})
        merged = merge_overrides(data, overrides)
        try:
            return cls.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(part) for part in first["loc"])
            for key, flag in (origins or {}).items():
                if key in overrides and (loc == key or loc.startswith(key + ".")):
                    inner = loc[len(key) + 1:]
                    text = f"{inner + ': ' if inner else ''}{_error_text(first)}{_more_errors(exc.errors())}"
                    raise InputError(f"{flag}: {text}") from None
            flagged = any(loc == key or loc.startswith(key + ".") or key.startswith(loc + ".") for key in overrides)
            where = "command line" if flagged or path is None else source
            flag = (flags or {}).get(loc)
            if first["type"] == "missing" and flag:
                hint = f"give {flag}" if path is None else f"set it in {path.name} or give {flag}"
                raise InputError(f"{where}: {loc}: required field is missing ({hint}){_more_errors(exc.errors())}")
            raise spec_error(exc, where) from None

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The spec as YAML (every field, defaults included); written atomically when ``path`` is given."""
        import yaml

        text = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
        if path is not None:
            from fairfm.tableio import write_text_atomic

            write_text_atomic(path, text)
        return text

    def image_column(self) -> str:
        """The SampleTable column the model's images are read from (``path``, or ``path_<view>``)."""
        return "path" if self.view is None else f"path_{self.view}"

    def typed_hparams(self) -> HParams:
        """The hyper-parameters as the usage's pydantic model (attribute access, types)."""
        return get_usage(self.usage).hparams.model_validate(self.hparams)

    def replace(self, **changes: Any) -> "RunSpec":
        """A copy with ``changes`` applied and validated again (``hparams=`` replaces the whole dictionary)."""
        return type(self).from_dict({**self.model_dump(), **changes}, source="spec")

    # -- canonical form --------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        """The dataset's ``dataset.json`` (fails naming the path looked for)."""
        return _read_manifest(self.dataset)

    def resolve(self) -> dict[str, Any]:
        """The canonical, fully-defaulted spec: absolute paths, defaults filled from the dataset, normalised floats,
        sorted keys; execution-only fields (``device``, ``trust_checkpoint``) left out. Hashing it gives the run id's
        spec part."""
        dataset = _absolute(self.dataset)
        if not (dataset / _MANIFEST_FILE).is_file() and len(Path(self.dataset).parts) == 1:
            # A dataset *name* (``dataset: chexpert``) must be prepared into a folder first; the run id hashes that.
            raise InputError(f"dataset: {str(self.dataset)!r} is not a prepared folder ({dataset / _MANIFEST_FILE} "
                             "not found); a registered dataset name is prepared from its root by 'fairfm run' or "
                             "fairfm.data.cache.resolve_dataset(spec, store_path)")  # fmt: skip
        manifest = _read_manifest(dataset)
        labels, groups = _dataset_columns(dataset)
        labels = self.typed_hparams().dataset_tasks(dataset, manifest, labels, self.tasks)
        tasks = self.tasks if self.tasks is not None else labels
        attributes = self.attributes if self.attributes is not None else groups
        for field, wanted, available in (("tasks", tasks, labels), ("attributes", attributes, groups)):
            prefix = "label_" if field == "tasks" else "group_"
            for name in wanted:
                if name not in available:
                    shown = ", ".join(available) or "none"
                    raise InputError(f"{field}: {dataset / _SAMPLES_FILE} has no column '{prefix}{name}' "
                                     f"(available: {shown})")  # fmt: skip
        if not tasks:
            raise InputError(f"tasks: {dataset / _SAMPLES_FILE} has no label_* column to evaluate")
        if self.view is not None and self.image_column() not in _samples_columns(dataset):
            views = [c.removeprefix("path_") for c in _samples_columns(dataset) if c.startswith("path_")]
            raise InputError(f"view: {dataset / _SAMPLES_FILE} has no column {self.image_column()!r} (views: "
                             f"{', '.join(views) or 'none besides path'})")  # fmt: skip
        recorded_split = (manifest.get("split") or {}).get("policy")
        if self.split is not None and recorded_split is not None and self.split != recorded_split:
            raise InputError(f"split: the spec asks for {self.split!r} but {dataset / _MANIFEST_FILE} was split with "
                             f"{recorded_split!r} (prepare the dataset again with --split {self.split})")  # fmt: skip
        recorded_seed = (manifest.get("split") or {}).get("seed")
        if self.split_seed is not None and recorded_seed is not None and self.split_seed != recorded_seed:
            raise InputError(f"split_seed: the spec asks for {self.split_seed} but {dataset / _MANIFEST_FILE} was split "
                             f"with seed {recorded_seed} (prepare the dataset again with --seed {self.split_seed}, "
                             "or give the dataset by name with its root)")  # fmt: skip
        root = self.root if self.root is not None else manifest.get("root")
        resolved = self.model_dump(mode="json", exclude=set(EXECUTION_FIELDS))
        resolved.update(
            dataset=str(dataset),
            root=str(_absolute(Path(root))) if root is not None else None,
            checkpoint=str(_absolute(self.checkpoint)) if self.checkpoint is not None else None,
            tasks=list(tasks),
            attributes=list(attributes),
            split=self.split if self.split is not None else recorded_split,
            split_seed=self.split_seed if self.split_seed is not None else recorded_seed,
        )
        if self.method is not None and resolved["method_params"].get("attribute") is None and attributes:
            from fairfm.mitigate.base import get_method_class

            needs = get_method_class(self.method).needs
            if needs.attribute_at_train or needs.attribute_at_test:  # null means the first: one id for one run
                resolved["method_params"] = {**resolved["method_params"], "attribute": list(attributes)[0]}
        return canonical(resolved)


def _validated_method_params(title: str, spec: "RunSpec") -> dict[str, Any]:
    """The method's fully-defaulted parameters (they are part of the run id); an unknown method, a bad parameter or
    a usage the method does not serve is a validation error under ``method`` / ``method_params.<field>``."""
    from fairfm.mitigate.base import get_method_class

    def error(loc: tuple[str, ...], value: Any, message: str) -> ValidationError:
        return ValidationError.from_exception_data(title, [InitErrorDetails(type="value_error", loc=loc,
                                                                            input=value, ctx={"error": message})])

    try:
        method_class = get_method_class(spec.method)
    except InputError as exc:
        raise error(("method",), spec.method, str(exc)) from None
    try:
        params = method_class.params_model.model_validate(spec.method_params)
    except ValidationError as exc:
        raise _prefixed(exc, ("method_params",), title) from None
    why = method_class(params).refusal(get_usage(spec.usage).loop, spec.usage, model_family=_model_family(spec.model))
    if why is not None:
        raise error(("method",), spec.method, why)
    return params.model_dump(mode="json")


def _method_threshold(title: str, spec: "RunSpec") -> None:
    """A method whose scores are decisions (``decision_threshold``, e.g. group thresholds) fixes the threshold
    policy: a spec that leaves ``threshold`` out gets it, one that asks for another policy is refused."""
    from fairfm.mitigate.base import get_method_class

    policy = get_method_class(spec.method).decision_threshold
    if policy is None or spec.threshold == policy:
        return
    if "threshold" not in spec.model_fields_set:
        spec.threshold = policy
        return
    raise ValidationError.from_exception_data(title, [InitErrorDetails(
        type="value_error", loc=("threshold",), input=spec.threshold,
        ctx={"error": f"method {spec.method!r} outputs decisions (0/1 or the probability of a positive decision), "
                      f"so the threshold must be {policy} (leave threshold out to get it)"})])  # fmt: skip


def spec_error(exc: ValidationError, source: str) -> InputError:
    """One line: ``source: field.path: message`` (the first error, with a count of the others)."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return InputError(f"{source}: {loc}: {_error_text(first)}{_more_errors(errors)}")


def _error_text(error: Mapping[str, Any]) -> str:
    """The message of one pydantic error, worded for a spec author."""
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling)"
    elif error["type"] == "missing":
        message = "required field is missing"
    elif error["type"].startswith("literal_error") and "expected" in error.get("ctx", {}):
        message = f"{error['input']!r} is not one of {error['ctx']['expected']}"
    return message.removeprefix("Value error, ")


def _more_errors(errors: list[Any]) -> str:
    return f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""


#: Hyper-parameters whose value is itself a list (never a sweep axis in the flat sweep form).
_LIST_HPARAMS = ("targets", "templates", "classnames", "betas")
#: Fields whose command-line value may be a comma-separated list (``--attr sex,race``).
_COMMA_LISTS = ("tasks", "attributes", "hparams.targets")
_EXPONENT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def parse_assignments(assignments: list[str] | tuple[str, ...], *, flag: str = "--set",
                      prefix: str = "") -> dict[str, Any]:
    """``["hparams.lr=1e-3", "attributes=sex,race", "method=null"]`` → ``{"hparams.lr": 0.001, ...}``.

    Values are read as YAML scalars (numbers, booleans, ``null``, ``[a, b]``); list fields also take ``a,b``.
    ``prefix`` is put before every key (``--hp lr=0.1`` is ``prefix="hparams."``); ``flag`` names the option in
    errors.
    """
    parsed: dict[str, Any] = {}
    for item in assignments:
        if "=" not in item:
            example = {"": ", e.g. hparams.lr=1e-3", "hparams.": ", e.g. lr=1e-3"}.get(prefix, "")
            raise InputError(f"{flag} {item!r}: expected {'KEY' if prefix else 'FIELD'}=VALUE{example}")
        key, text = (part.strip() for part in item.split("=", 1))
        if not key:
            raise InputError(f"{flag} {item!r}: empty field name")
        parsed[prefix + key] = parse_value(prefix + key, text)
    return parsed


def parse_value(key: str, text: str) -> Any:
    """One command-line value of the field ``key``: a YAML scalar or list; ``a,b`` is a list for list fields."""
    import yaml

    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    if isinstance(value, str) and _EXPONENT.fullmatch(value):  # YAML 1.1 reads "1e-3" as text
        value = float(value)
    if key in _COMMA_LISTS and isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    return value


def merge_overrides(data: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted paths (``hparams.lr``) in a copy of ``data``."""
    merged = json.loads(json.dumps(dict(data), default=str))
    for key, value in overrides.items():
        parts = key.split(".")
        target = merged
        for part in parts[:-1]:
            child = target.get(part)
            if not isinstance(child, dict):
                child = target[part] = {}
            target = child
        target[parts[-1]] = value
    return merged


# ---------------------------------------------------------------------------------------------------------------
# Sweeps


class SweepSpec(_Strict):
    """A grid of runs: the Cartesian product of the ``grid`` values (in field order, seeds varying fastest) on top of
    the ``base`` fields, once per seed in ``seeds``. A checkpoint belongs to its model: when both ``model`` and
    ``checkpoint`` are swept they are paired (the i-th model with the i-th checkpoint, one axis), not crossed.

    The flat form is also accepted: RunSpec fields at the top level, a list meaning "sweep over these values"
    (``model: [a, b]``, ``hparams: {lr: [1e-3, 1e-4]}``), except for fields whose value is itself a list
    (``tasks``, ``attributes``, ``hparams.targets/templates/classnames/betas``) — sweep those with
    ``grid: {hparams.targets: [[qkv], [qkv, proj]]}``.
    """

    base: dict[str, Any] = Field(default_factory=dict, description="fields shared by every run")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="field -> values (hparams.lr for hparams)")
    seeds: list[int] = Field(default_factory=lambda: [0])

    _list_fields: ClassVar[frozenset[str]] = frozenset({"tasks", "attributes"})
    _source: str = PrivateAttr("sweep")

    @model_validator(mode="before")
    @classmethod
    def _flat_form(cls, data: Any) -> Any:
        # Also accept the flat form: RunSpec fields at the top level, lists meaning "sweep over these values".
        if not isinstance(data, Mapping) or set(data) <= {"base", "grid", "seeds"}:
            return data
        data = dict(data)
        seeds = data.pop("seeds", [0])
        base, grid = dict(data.pop("base", {})), dict(data.pop("grid", {}))
        for key, value in data.items():
            if key == "hparams" and isinstance(value, Mapping):
                for hkey, hvalue in value.items():
                    if isinstance(hvalue, list) and hkey not in _LIST_HPARAMS:
                        grid[f"hparams.{hkey}"] = hvalue
                    else:
                        base.setdefault("hparams", {})[hkey] = hvalue
            elif isinstance(value, list) and key not in cls._list_fields:
                grid[key] = value
            else:
                base[key] = value
        return {"base": base, "grid": grid, "seeds": seeds}

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in value.items():
            if not values:
                raise ValueError(f"{key}: empty list of values")
            if key == "seed":
                raise ValueError("sweep seeds with 'seeds: [0, 1, 2]', not in the grid")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("empty list of seeds")
        if len(set(value)) != len(value):
            raise ValueError("a seed is listed twice")
        return value

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "sweep") -> "SweepSpec":
        try:
            sweep = cls.model_validate(data)
        except ValidationError as exc:
            raise spec_error(exc, source) from None
        sweep._source = source
        sweep._validate_cells()  # every cell now, not halfway through a sweep
        return sweep

    def _validate_cells(self) -> None:
        """Every cell's spec is valid; otherwise one InputError listing every invalid cell, one line each."""
        cells_of: dict[str, list[int]] = {}  # error message -> the cells that have it
        for index, cell in enumerate(self._cells()):
            try:
                RunSpec.from_dict(cell, source=self._source)
            except InputError as exc:
                cells_of.setdefault(str(exc).removeprefix(f"{self._source}: "), []).append(index)
        if len(cells_of) == 1:  # one problem: one line, naming the cells unless every cell has it
            (message, cells), = cells_of.items()
            plural = "s" if len(cells) > 1 else ""
            where = "" if len(cells) == len(self) else f"sweep cell{plural} {', '.join(map(str, cells))}: "
            raise InputError(f"{self._source}: {where}{message}")
        if cells_of:
            lines = "\n  ".join(f"sweep cell{'s' if len(cells) > 1 else ''} {', '.join(map(str, cells))}: {message}"
                                for message, cells in cells_of.items())  # fmt: skip
            count = sum(len(cells) for cells in cells_of.values())
            raise InputError(f"{self._source}: {count} of {len(self)} sweep cell(s) are invalid:\n  {lines}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SweepSpec":
        path = Path(path)
        data = _read_yaml(path)
        if not isinstance(data, Mapping):
            raise InputError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
        return cls.from_dict(_relative_to(data, path.parent), source=str(path))

    @model_validator(mode="after")
    def _paired_model_checkpoint(self) -> "SweepSpec":
        models, checkpoints = self.grid.get("model"), self.grid.get("checkpoint")
        if models is not None and checkpoints is not None and len(models) != len(checkpoints):
            raise ValueError(f"model has {len(models)} values and checkpoint {len(checkpoints)}: a sweep pairs each "
                             "model with its own checkpoint (in step, not crossed), so give one checkpoint per model")
        return self

    def _axes(self) -> list[tuple[tuple[str, ...], list[tuple[Any, ...]]]]:
        """The grid's axes: (field names, their values per step); model and checkpoint share one axis."""
        paired = "model" in self.grid and "checkpoint" in self.grid
        axes = []
        for key in self.grid:
            if paired and key == "checkpoint":
                continue
            if paired and key == "model":
                axes.append((("model", "checkpoint"), list(zip(self.grid["model"], self.grid["checkpoint"]))))
            else:
                axes.append(((key,), [(value,) for value in self.grid[key]]))
        return axes

    def __len__(self) -> int:
        return math.prod(len(values) for _, values in self._axes()) * len(self.seeds)

    def expand(self) -> Iterator[RunSpec]:
        """Every cell of the grid as a validated :class:`RunSpec`."""
        for cell in self._cells():
            yield RunSpec.from_dict(cell, source=self._source)

    def _cells(self) -> Iterator[dict[str, Any]]:
        """Every cell of the grid as plain fields (seed included), in grid order, seeds varying fastest."""
        axes = self._axes()
        for steps in itertools.product(*(values for _, values in axes)):
            cell: dict[str, Any] = json.loads(json.dumps(self.base, default=str))
            for (keys, _), values in zip(axes, steps):
                for key, value in zip(keys, values):
                    if key.startswith("hparams."):
                        cell.setdefault("hparams", {})[key.split(".", 1)[1]] = value
                    else:
                        cell[key] = value
            for seed in self.seeds:
                yield {**cell, "seed": seed}


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def canonical(value: Any) -> Any:
    """Sorted keys, floats normalised (12 significant digits, -0.0 → 0.0, integral floats stay floats)."""
    if isinstance(value, Mapping):
        return {str(k): canonical(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InputError(f"non-finite number {value!r} in a spec")
        normalised = float(f"{value:.12g}")
        return 0.0 if normalised == 0 else normalised
    if isinstance(value, os.PathLike):
        return str(value)
    return str(value)


def canonical_json(value: Any) -> str:
    """The exact text that is hashed: canonical values, sorted keys, no whitespace."""
    return json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _read_yaml(path: Path) -> Any:
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: spec file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise InputError(f"{path}: the spec file is empty")
    return data


_PATH_FIELDS = ("dataset", "root", "checkpoint")


def _relative_to(data: Any, folder: Path, keys: tuple[str, ...] = _PATH_FIELDS) -> Any:
    if not isinstance(data, Mapping):
        return data
    out = dict(data)

    def relative(key: str, value: Any) -> Any:
        if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
            return value
        if key == "dataset" and _is_dataset_name(value, folder):
            return value  # a registered dataset name (prepared on the fly), not a path
        return str(folder / value)

    for key in keys:
        if key in out:
            value = out[key]
            out[key] = [relative(key, v) for v in value] if isinstance(value, list) else relative(key, value)
    if isinstance(out.get("base"), Mapping):
        out["base"] = _relative_to(out["base"], folder, keys)
    if isinstance(out.get("grid"), Mapping):
        out["grid"] = _relative_to(out["grid"], folder, keys)
    return out


def _read_manifest(dataset: Path) -> dict[str, Any]:
    dataset = Path(dataset)
    manifest_path = dataset / _MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputError(f"dataset: {manifest_path} not found — is {dataset} a folder written by "
                         f"'fairfm datasets prepare'?")  # fmt: skip
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"dataset: {manifest_path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"dataset: {manifest_path}: expected a JSON object")
    return manifest


def _dataset_columns(dataset: Path) -> tuple[list[str], list[str]]:
    """(task names, attribute names) from the Parquet schema only — no rows are read."""
    names = _samples_columns(dataset)
    labels = [c.removeprefix("label_") for c in names if c.startswith("label_")]
    groups = [c.removeprefix("group_") for c in names if c.startswith("group_")]
    return labels, groups


def _samples_columns(dataset: Path) -> list[str]:
    """Column names of the dataset's samples.parquet (its schema only)."""
    import pyarrow.parquet as pq

    samples = Path(dataset) / _SAMPLES_FILE
    if not samples.is_file():
        raise InputError(f"dataset: {samples} not found — is {dataset} a folder written by 'fairfm datasets prepare'?")
    try:
        names = pq.read_schema(samples).names
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise InputError(f"dataset: {samples}: cannot be read as Parquet ({str(exc).splitlines()[0]})") from None
    return list(names)
