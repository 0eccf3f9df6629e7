"""Pretrained parts of an eraser: found in local or s3:// folders, checked cheaply, loaded strictly.

Every part is a Hugging Face folder (``save_pretrained`` of a diffusers model, a transformers model or
a tokenizer), given by path in the config and never fetched from a hub. ``check_part`` runs in the
driver before Ray starts: the folder's config must build the expected architecture and its
safetensors weights must hold exactly that architecture's tensors (names and shapes, read from the
file header on the meta device: nothing is loaded). ``load_part`` loads it in a worker.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..operators.checkpoints import CheckpointError, local_path

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def part_folder(uri: str, what: str) -> str:
    """The local folder of a part (an S3 prefix is copied to the cache once per machine)."""
    folder = local_path(uri, what)
    if not os.path.isdir(folder):
        raise CheckpointError(f"{what} {uri} is a file; expected a folder written by save_pretrained")
    return folder


def read_config(folder: str, uri: str, what: str, name: str = "config.json") -> dict:
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{what} {uri} has no {name}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{what} {uri}: {name} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{what} {uri}: {name} is not a JSON object")
    return config


def _meta_model(cls, config: dict, uri: str, what: str):
    """The architecture a config describes, built on the meta device (no memory, no weights)."""
    import torch

    try:
        with torch.device("meta"):
            if hasattr(cls, "from_config"):  # diffusers models
                return cls.from_config(config)
            config_cls = cls.config_class
            return cls(config_cls.from_dict(config))
    except Exception as exc:  # a config of another model raises anything from TypeError to KeyError
        raise CheckpointError(f"{what} {uri}: its config.json does not describe a {cls.__name__}: {str(exc).splitlines()[0][:200]}") from None


def check_part(cls, uri: str, what: str) -> dict:
    """Fail in one line unless `uri` holds a `cls` whose weights fit its config; returns the config.

    Safetensors headers are compared with the architecture; other weight formats (a pickled .bin) are
    only checked to exist here, and loaded strictly in the workers.
    """
    from safetensors import safe_open

    folder = part_folder(uri, what)
    config = read_config(folder, uri, what)
    expected = {k: tuple(v.shape) for k, v in _meta_model(cls, config, uri, what).state_dict().items()}
    weights = next((os.path.join(folder, f) for f in WEIGHT_FILES if os.path.isfile(os.path.join(folder, f))), None)
    if weights is None:
        if not any(f.endswith((".bin", ".safetensors")) or f.endswith(".index.json") for f in os.listdir(folder)):
            raise CheckpointError(f"{what} {uri} holds no weights (expected {' or '.join(WEIGHT_FILES)})")
        return config
    try:
        with safe_open(weights, "pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise CheckpointError(f"{what} {uri}: {os.path.basename(weights)} is not readable: {exc}") from None
    missing = sorted(set(expected) - set(found))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or wrong:
        detail = f"{len(missing)} weights missing ({', '.join(missing[:2])})" if missing else ""
        if wrong:
            detail += ("; " if detail else "") + f"{len(wrong)} of another shape ({wrong[0]}: {found[wrong[0]]} != {expected[wrong[0]]})"
        raise CheckpointError(f"{what} {uri} does not fit its config ({cls.__name__}): {detail}")
    return config


def load_part(cls, uri: str, what: str, **kwargs) -> Any:
    """`cls.from_pretrained` of the part's local folder, strictly: transformers models report what did not
    load (they would otherwise start those weights at random), diffusers models raise on it."""
    folder = part_folder(uri, what)
    strict = hasattr(cls, "config_class") and not hasattr(cls, "from_config")  # a transformers model
    try:
        loaded = cls.from_pretrained(folder, local_files_only=True, **({"output_loading_info": True} if strict else {}), **kwargs)
    except (OSError, ValueError, RuntimeError, EnvironmentError) as exc:
        raise CheckpointError(f"{what} {uri} does not load as a {cls.__name__}: {' '.join(str(exc).split())[:300]}") from None
    if not strict:
        return loaded
    model, info = loaded
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        raise CheckpointError(f"{what} {uri} does not fit {cls.__name__}: " + "; ".join(f"{k} {list(v)[:2]}" for k, v in bad.items()))
    return model
