"""Configs: YAML + ``--set key=value`` overrides, validated into one typed object per command.

A pipeline config is the pipeline's parameters, which decide the samples and are hashed into
``config_hash``, plus fields marked runtime (``shards``, ``ray``, a model stage's batch size, device,
GPUs and actors): how and where it runs, not hashed. Each pipeline declares its config class next
to its graph (its operators' parameters + ``RunParams``). Errors name the key and fit on one line.
"""

from __future__ import annotations

import hashlib
import json
import typing
from typing import TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from .. import storage
from ..errors import UserError
from ..operators.params import RUNTIME, Params
from .dedup import DedupParams


class ConfigError(UserError, ValueError):
    """A config that cannot be used; the message is one line for the user."""


class RayParams(Params):
    address: str | None = Field(None, description="null: start an embedded local Ray (or join $RAY_ADDRESS when set); 'auto' or HOST:6379 to join a cluster")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (null: all of this machine's)")
    object_store_memory: int | None = Field(None, ge=1 << 26, description="object store bytes of the embedded Ray (null: Ray's default)")
    metrics: bool = Field(
        False, description="the embedded Ray exports its metrics (off: ~10% more throughput on a 2-core node; a cluster keeps its own)")


class ShardParams(Params):
    """Shard cutting; does not change the samples, so it is not part of the config hash."""

    max_samples: int = Field(1000, ge=1, description="a shard is closed once it holds this many samples (a group is never split, so a shard can hold one group's samples more)")
    max_bytes: int = Field(1 << 30, ge=1 << 16, description="bytes per shard, at most (a group is never split)")


class RunParams(Params):
    """How a pipeline run cuts shards and where Ray runs (runtime, so not part of the config hash), and the
    output-wide near-duplicate cap (hashed: it decides which samples exist)."""

    dedup: DedupParams = Field(default_factory=DedupParams)
    shards: ShardParams = Field(default_factory=ShardParams, json_schema_extra=RUNTIME)
    ray: RayParams = Field(default_factory=RayParams, json_schema_extra=RUNTIME)


C = TypeVar("C", bound=BaseModel)


def _semantic(model: BaseModel) -> dict:
    """The model as JSON data without its runtime fields, at any depth."""
    data = {}
    for name, field in type(model).model_fields.items():
        if (field.json_schema_extra or {}).get("runtime"):
            continue
        value = getattr(model, name)
        data[name] = _semantic(value) if isinstance(value, BaseModel) else model.model_dump(mode="json", include={name})[name]
    return data


def config_hash(config: BaseModel) -> str:
    """SHA-256 of the parameters that decide the samples (runtime fields left out)."""
    return hashlib.sha256(json.dumps(_semantic(config), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def changed_keys(before: dict, config: BaseModel) -> list[str]:
    """The dotted keys of `config`'s hashed parameters whose values differ from a saved dump of a config
    (`before`, e.g. a run summary's), so that a refused config can say what changed."""

    def diff(old, new: dict, prefix: str) -> list[str]:
        old = old if isinstance(old, dict) else {}
        found = []
        for key, value in sorted(new.items()):
            if isinstance(value, dict) and isinstance(old.get(key), dict):
                found += diff(old[key], value, f"{prefix}{key}.")
            elif old.get(key) != value:
                found.append(f"{prefix}{key}")
        return found

    return diff(before, _semantic(config), "")


def changes_note(before: dict, config: BaseModel) -> str:
    """"; changed: KEYS" for a refused config's message (the first six keys that differ), or "" when none do."""
    changed = changed_keys(before, config)
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    return f"; changed: {', '.join(changed[:6])}{more}" if changed else ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (not the last one wins)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml(text: str | bytes):
    """Parse YAML; a YAMLError's message becomes one line that names the line and column."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(where + (getattr(exc, "problem", None) or storage.first_line(exc))) from None


def _set(data: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}={raw}: empty key")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}={raw}: {key} is not a section")
        node = child
    try:
        node[keys[-1]] = _yaml(raw) if raw != "" else None
    except ConfigError as exc:
        raise ConfigError(f"--set {dotted}: value {raw!r} is not valid YAML ({exc})") from None


def _models_in(annotation) -> list[type[BaseModel]]:
    """The config models a field holds: its type, or the members of a (discriminated) union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _key_path(model: type[BaseModel], loc: tuple) -> tuple[tuple, list[str]]:
    """The YAML key path of an error location (union tags dropped) and the keys known where it ends."""
    path, known = [], sorted(model.model_fields)
    models = [model]
    for part in loc:
        tagged = [m for m in models if part == getattr(m.model_fields.get("name"), "default", None)]
        if tagged and len(models) > 1:  # pydantic adds the union member's tag: not a YAML key
            models, known = tagged, sorted(tagged[0].model_fields)
            continue
        path.append(part)
        field = next((m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields), None)
        models = _models_in(field.annotation) if field else []
        if models:
            known = sorted(models[0].model_fields)
    return tuple(path), known


def _describe(model: type[BaseModel], error: dict) -> str:
    loc, known = _key_path(model, tuple(error["loc"]))
    key = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        _, known = _key_path(model, tuple(error["loc"])[:-1])
        return f"unknown key {key!r}" + (f" (known here: {', '.join(known)})" if known else "")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "union_tag_invalid":  # our unions are chosen by `name`
        return f"{key}.name: {error['ctx']['tag']!r} is not one of {error['ctx']['expected_tags']}"
    if error["type"] == "missing":
        return f"{key}: missing"
    shown = json.dumps(error.get("input"), default=str)
    return f"{key}: {message} (got {shown[:60]})" if loc else message


def load_config(model: type[C], path: str | None = None, overrides: list[str] = ()) -> C:
    """Read YAML (optional), apply ``key=value`` overrides, validate; ConfigError on any problem."""
    data: dict = {}
    if path:
        try:
            text = storage.read_bytes(path)
        except (OSError, storage.StorageError) as exc:
            raise ConfigError(f"cannot read config {path}: {storage.first_line(exc)}") from None
        try:
            data = _yaml(text) or {}
        except ConfigError as exc:
            raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {path} must be a mapping of keys to values")
    for item in overrides:
        dotted, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        _set(data, dotted.strip(), raw.strip())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(model, e) for e in exc.errors())) from None


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
