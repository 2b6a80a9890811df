"""A suite's environment tables (a profile's `env` and `device_env`), each variable as the OS will take it when a
worker or server starts: checked before any folder is created, one line naming the key."""

from __future__ import annotations

import os
import sys

from .tomltable import SuiteError, Table

# Linux's MAX_ARG_STRLEN (32 pages of 4 KiB): the longest single NAME=value string, with its NUL, that execve takes.
ENV_MAX_BYTES = 131072
# A table's variables together: half of the usual ARG_MAX (2 MiB, shared with the arguments and the environment the
# harness itself inherits).
ENV_TOTAL_BYTES = 1 << 20


def env_problem(name: str, value: str) -> str:
    """Why the OS would refuse this variable when the worker or server starts ("" when it would not)."""
    if "\0" in name:
        return "a variable name cannot contain a NUL byte; rename it"
    if "=" in name:
        return "a variable name cannot contain '=' (the OS splits NAME=value at the first one); rename it"
    if "\0" in value:
        return "the value contains a NUL byte, which no environment variable can hold; remove it"
    try:
        size = len(os.fsencode(name)) + len(os.fsencode(value)) + 2  # NAME=value and its NUL
    except UnicodeEncodeError:
        return f"cannot be encoded for the OS ({sys.getfilesystemencoding()}); use characters it can hold"
    if size > ENV_MAX_BYTES:
        return (
            f"NAME=value is {size - 1} bytes; the OS takes at most {ENV_MAX_BYTES} bytes per variable, its NUL "
            "included (Linux MAX_ARG_STRLEN); shorten the value"
        )
    return ""


def env_table(env: Table) -> tuple[tuple[str, str], ...]:
    """A table of environment variables, each as the OS will take it when a worker or server starts."""
    for k, v in env.data.items():
        if not k:
            raise SuiteError(f"{env.path}: {env.where}: an empty variable name; every variable needs a name")
        if not isinstance(v, str):
            raise env.fail(k, f'expected a string (environment values are text, write "{v}"), got {v!r}')
        if problem := env_problem(k, v):
            raise env.fail(k, problem)
    total = sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 for k, v in env.data.items())
    if total > ENV_TOTAL_BYTES:
        raise SuiteError(
            f"{env.path}: {env.where}: its variables come to {total} bytes; the OS takes about 2 MiB of arguments and "
            f"environment in all, so the harness takes at most {ENV_TOTAL_BYTES} per table; shorten them"
        )
    env.used.update(env.data)
    return tuple(sorted(env.data.items()))
