"""One registry mechanism for everything the harness looks up by name: run kinds, adapters and doctor check modules.

Entries are lazy "module:attr" strings (or a bare module), built in or added by an installed package through an
entry-point group, so looking a name up imports nothing heavy (never torch_npu) until that entry is used. An
unknown name gets "did you mean"; an entry that does not fit its contract is one line naming it and what it lacks.
Modelled on lm-evaluation-harness's api/registry.py.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class RegistryError(ValueError):
    """A name that is not registered, or an entry that cannot be imported or does not fit: one line."""


@dataclass(frozen=True)
class Registry:
    what: str  # "run kind", "adapter", ...: the word the messages use
    group: str  # the entry-point group installed packages add entries through
    builtin: dict[str, str]  # name -> "module:attr" or "module"
    problem: Callable[[Any], str] = lambda obj: ""  # "" when an entry fits its contract, else what it lacks

    def entries(self) -> dict[str, str]:
        found = dict(self.builtin)
        for ep in importlib.metadata.entry_points(group=self.group):
            found[ep.name] = ep.value
        return found

    def resolve(self, name: str) -> str:
        """The "module:attr" a name stands for, without importing it."""
        table = self.entries()
        if name not in table:
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"unknown {self.what} {name!r}{hint} (known: {', '.join(sorted(table))})")
        return table[name]

    def get(self, name: str) -> Any:
        """The entry, imported and checked against its contract."""
        target = self.resolve(name)
        module, _, attr = target.partition(":")
        try:
            obj = importlib.import_module(module)
            obj = getattr(obj, attr) if attr else obj
        except (ImportError, AttributeError) as e:
            raise RegistryError(
                f"{self.what} {name!r} ({target}) cannot be imported: {type(e).__name__}: {e}"
            ) from None
        if why := self.problem(obj):
            raise RegistryError(f"{self.what} {name!r} ({target}) {why}")
        return obj


def kind_problem(obj: Any) -> str:
    missing = [m for m in ("load", "items", "execute") if not callable(getattr(obj, m, None))]
    if missing:
        return f"lacks {', '.join(missing)}() (a run kind needs load(path, data, opts), items(suite), execute(suite, opts))"
    return ""


def adapter_problem(obj: Any) -> str:
    from .jobs import adapter_problem

    return adapter_problem(obj)


KINDS = Registry(
    "run kind",
    "harness.kinds",
    {
        "determinism": "harness.suitekind:DETERMINISM",
        "served": "harness.suitekind:SERVED",
        "loadtime": "harness.loadtime.kind:KIND",
    },
    kind_problem,
)
ADAPTERS = Registry(
    "adapter",
    "harness.adapters",
    {
        "hf": "harness.adapters.hf:HFAdapter",
        "endpoint": "harness.adapters.endpoint:EndpointAdapter",
        "vllm": "harness.adapters.vllm:VLLMAdapter",
    },
    adapter_problem,
)
# Doctor checks register themselves with @doctor.check when their module is imported; they run, and are reported,
# in this order, then those of installed packages.
CHECKS = Registry(
    "doctor check module",
    "harness.checks",
    {
        "suite": "harness.doctor.suite",
        "python": "harness.doctor.python",
        "model": "harness.doctor.model",
        "memory": "harness.doctor.memory",
        "loadtime": "harness.doctor.loadtime",
        "determinism": "harness.doctor.determinism",
        "serving": "harness.doctor.serving",
    },
)
