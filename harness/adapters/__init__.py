"""The built-in adapters (hf, endpoint, vllm), looked up through harness.registry.ADAPTERS; an installed package
adds one through the entry-point group `harness.adapters`. Importing this package imports no model code."""

from __future__ import annotations

from typing import Any

from ..registry import ADAPTERS, RegistryError

AdapterError = RegistryError  # the named adapter cannot be used; one line naming it and what it lacks


def resolve(name: str) -> str:
    """The "module:attr" an adapter name stands for, without importing it."""
    return ADAPTERS.resolve(name)


def get(name: str) -> Any:
    """The adapter class, checked against the contract (harness.jobs.Adapter)."""
    return ADAPTERS.get(name)
