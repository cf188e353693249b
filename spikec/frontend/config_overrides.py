"""``--config KEY=VALUE``: a transformers config with fields overridden from strings.

Each value is cast to the type of the field it replaces (int, float, bool, str; JSON for
containers), an unknown key is refused in one line with the closest valid keys, and the config is
built again through its constructor so that derived fields follow.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from spikec.core.errors import UsageError


def config_with_overrides(cls, base: dict[str, Any], overrides: dict[str, str], name: str):
    """``cls(**base, **overrides)`` with each override cast to the type of the field it replaces.
    Built through the constructor so that derived fields (e.g. Llama's head_dim) follow."""
    if not overrides:
        return cls(**base)
    reference = cls(**base)
    kwargs = dict(base)
    for key, text in overrides.items():
        if key == "rope_theta" and isinstance(getattr(reference, "rope_parameters", None), dict):
            rope = dict(reference.rope_parameters)
            rope["rope_theta"] = _cast(text, rope.get("rope_theta"), key)
            kwargs["rope_parameters"] = rope
            continue
        if not _is_config_field(reference, key):
            raise UsageError(
                f"unknown config override {key!r} for {name} ({type(reference).__name__})",
                hint=_valid_keys_hint(reference, key),
            )
        key_in_init = reference.attribute_map.get(key, key)
        kwargs[key_in_init] = _cast(text, getattr(reference, key), key)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise UsageError(f"config overrides {overrides} give an invalid {name} architecture: {e}") from None


def _is_config_field(config, key: str) -> bool:
    """Whether ``key`` names a field (or an alias of one) of ``config``."""
    return key in config.to_dict() or key in config.attribute_map or key in vars(config)


def _valid_keys_hint(config, key: str) -> str:
    """A hint listing the keys closest to ``key`` and the common shape keys of ``config``."""
    keys = sorted(set(config.to_dict()) | set(config.attribute_map))
    close = difflib.get_close_matches(key, keys, n=3)
    common = [k for k in ("n_layer", "n_embd", "n_head", "num_hidden_layers", "hidden_size",
                          "num_attention_heads", "num_key_value_heads", "intermediate_size",
                          "vocab_size") if k in keys]
    shown = close + [k for k in common if k not in close]
    return "valid keys include: " + ", ".join(shown[:8])


def _cast(text: str, current: Any, key: str) -> Any:
    """Parse ``text`` as the type of ``current`` (int, float, bool, str; JSON for containers)."""
    try:
        if isinstance(current, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (dict, list, tuple)):
            return json.loads(text)
        if isinstance(current, str):
            return text
        # None or an unknown type: the most specific literal that parses.
        if text.strip().lower() in ("none", "null"):
            return None
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
        return text
    except ValueError:
        kind = type(current).__name__
        raise UsageError(f"config override {key}={text!r} is not a valid {kind}") from None
