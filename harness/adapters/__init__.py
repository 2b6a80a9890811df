"""Adapter registry: lazy "module:attr" strings, extended through the entry-point group
`harness.adapters`, so importing the registry imports no model code (and never torch_npu)."""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from typing import Any

BUILTIN = {
    "hf": "harness.adapters.hf:HFAdapter",
    "endpoint": "harness.adapters.endpoint:EndpointAdapter",
    "vllm": "harness.adapters.vllm:VLLMAdapter",
}
GROUP = "harness.adapters"


def available() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in importlib.metadata.entry_points(group=GROUP):
        found[ep.name] = ep.value
    return found


def resolve(name: str) -> str:
    """The "module:attr" an adapter name stands for, without importing it."""
    table = available()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown adapter {name!r}{hint} (known: {', '.join(sorted(table))})")
    return table[name]


class AdapterError(ValueError):
    """The named adapter cannot be used; the message is one line naming it and what it lacks."""


def get(name: str) -> Any:
    """The adapter class, checked against the contract (harness.jobs.Adapter) when its entry point is resolved."""
    from ..jobs import adapter_problem

    target = resolve(name)
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise AdapterError(f"adapter {name!r} ({target}) cannot be imported: {type(e).__name__}: {e}") from None
    if problem := adapter_problem(cls):
        raise AdapterError(f"adapter {name!r} ({target}) {problem}")
    return cls
