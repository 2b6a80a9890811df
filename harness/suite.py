"""Suite files: the data model, frozen dataclasses with a case hash.

The parser is suite_parse.py (`load`, `parse`), which depends on this module and never the other way; the TOML
reader is tomltable.py, the served parts ([server], [endpoint]) are harness/serving/spec.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, cast

# Re-exported (`X as X`): a suite's served parts and the TOML reader's errors are read from here too.
from .serving.spec import MIB as MIB
from .serving.spec import Endpoint as Endpoint
from .serving.spec import Server as Server
from .serving.spec import base_url as base_url
from .status import Expectation, Tier
from .tomltable import Rule as Rule
from .tomltable import SuiteError as SuiteError
from .tomltable import Table as Table
from .tomltable import decode as decode
from .tomltable import did_you_mean as did_you_mean
from .tomltable import read_bytes as read_bytes
from .tomltable import read_toml as read_toml
from .tomltable import tomllib as tomllib

SUITE_FORMAT = 1
DEVICES = ("cpu", "cuda", "npu")
DTYPES = ("float32", "bfloat16", "float16")
BASELINE_LEVELS = ("bitwise", "tokens", "close", "report")
PROPERTIES = ("repeatability", "batch-invariance", "tp-invariance")
# kind -> allowed parameters with defaults; `seed` and `name` are allowed everywhere.
SCHEDULE_PARAMS: dict[str, dict[str, Any]] = {
    "solo": {},
    "repeat": {"count": 2, "batch_size": 0},
    "permutation": {"count": 4, "batch_size": 0},
    "batch-sizes": {"sizes": [2, 3, 5, 8, 16]},
    "needle": {"trials": 5, "min_size": 2, "max_size": 0, "prompt": ""},
}
SCHEDULE_PROPERTY = {
    "repeat": "repeatability",
    "permutation": "batch-invariance",
    "batch-sizes": "batch-invariance",
    "needle": "batch-invariance",
}


@dataclass(frozen=True)
class Attachment:
    """An image, audio or video file sent with a prompt to a served model, base64-encoded in the request body."""

    path: str  # resolved; not part of the case hash (checkouts differ), the content digest is
    mime: str
    sha256: str


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    chat: bool = False
    kind: str = ""
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Schedule:
    kind: str
    name: str
    seed: int
    count: int = 0
    batch_size: int = 0
    sizes: tuple[int, ...] = ()
    trials: int = 0
    min_size: int = 0
    max_size: int = 0
    prompt: str = ""

    @property
    def property(self) -> str | None:
        return SCHEDULE_PROPERTY.get(self.kind)


@dataclass(frozen=True)
class Profile:
    name: str
    env: tuple[tuple[str, str], ...] = ()
    torch_deterministic: bool = False
    # device -> property -> expectation; missing entries mean "report"
    expect: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    description: str = ""
    # device -> variables added to (or replacing) env on that device only, e.g. VLLM_BATCH_INVARIANT on npu
    device_env: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    shared_env: tuple[tuple[str, str], ...] | None = None  # env before on_device() added a device's variables
    devices: tuple[str, ...] = ()  # [profiles.X] devices: where it means something (CPU pins); () every device
    python: str = ""  # another stack's interpreter for its workers (harness.stacks); "" this one
    setup: str = ""  # a shell file sourced before its workers start (CANN's set_env.sh); its exports go with them

    def expectation(self, device: str, prop: str) -> Expectation:
        # suite_parse admits only EXPECTATIONS into `expect`
        return cast("Expectation", dict(dict(self.expect).get(device, ())).get(prop, "report"))

    def on_device(self, device: str) -> Profile:
        """The profile as run on `device`: `env` is the shared variables plus that device's (which win)."""
        if not self.device_env:
            return self
        shared = self.env if self.shared_env is None else self.shared_env
        env = {**dict(shared), **dict(dict(self.device_env).get(device, ()))}
        return dataclasses.replace(self, env=tuple(sorted(env.items())), shared_env=shared)


@dataclass(frozen=True)
class ModelSpec:
    ref: str = "smollm2-135m"
    dtype: str = "float32"
    device: str = "cpu"
    adapter: str = "hf"  # a name in the harness.adapters registry


@dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 64
    greedy: bool = True
    top_logprobs: int = 5
    close_k: int = 0  # top-k for the `close` level; 0: every captured top_logprobs. Judges, shapes nothing

    @property
    def k(self) -> int:
        return self.close_k or self.top_logprobs


@dataclass(frozen=True)
class BaselinePolicy:
    """What a run must meet against a baseline, by how the baseline's device key relates to the run's."""

    same_key: Expectation = "bitwise"
    other_software: Expectation = "tokens"  # a torch, CANN, driver or transformers upgrade on the same hardware
    other_hardware: Expectation = (
        "close"  # another chip or CPU model of the same device type (vLLM check_logprobs_close)
    )

    def level(self, tier: Tier) -> Expectation:
        return {
            "same key": self.same_key,
            "other software": self.other_software,
            "other hardware": self.other_hardware,
        }[tier]


LATENCY_METRICS = ("ttft", "tpot", "e2e", "tok_s")

# Per profile beside a reference, unless [perf] processes says: on the 2-core Intel VM (docs/latency.md) the spread of
# process-median log ratios gave 8 processes a 0.89 chance to catch 3% and 1.00 for 5% at the run's first Holm
# level; 6 gave 0.54 and 0.97.
REFERENCE_PROCESSES = 8


@dataclass(frozen=True)
class Localize:
    """[localize]: at the end of a run, the worst case of each property that failed or was only close is localised
    (harness.localize.auto), at most `max_cases` of them."""

    auto: bool = True
    max_cases: int = 3


@dataclass(frozen=True)
class Perf:
    """How latency is sampled and gated: warm-up passes, measured passes, per-metric thresholds."""

    warmup: int = 0
    repeats: int = 1
    threshold: float = 0.05  # default relative change that counts, per metric
    thresholds: tuple[tuple[str, float], ...] = ()  # metric -> threshold
    alpha: float = 0.05  # for comparisons that gate nothing (the determinism cost)
    budget: float = 0.01  # chance that an A/A run flags any gated row (family-wise)
    interleave: bool = True  # profiles take turns pass by pass (false: models too big for two)
    noise_share: float = 0.25  # a pass during which other processes used more CPU is noisy
    reference: str = ""  # a profile measured in this run that every other profile is gated against
    processes: int = 0  # fresh worker processes per profile (harness.processes); 0: `units` decides
    reference_threshold: float = 0.02  # a change against the reference counts above this (side by side: less drift)

    @property
    def units(self) -> int:
        """Worker processes per profile: as set, else REFERENCE_PROCESSES beside a reference (processes are the units
        of its test), else one."""
        return self.processes or (REFERENCE_PROCESSES if self.reference else 1)


@dataclass(frozen=True)
class Parallel:
    """Tensor parallel degrees: each degree > 1 runs as a torchrun worker group, one process per device."""

    tp: tuple[int, ...] = (1,)  # sorted; the smallest is the reference of tp-invariance
    collective_timeout_s: float = 300.0  # init_process_group(timeout=...): a rank stuck in a collective ends here
    nnodes: int = 1  # torchrun --nnodes: a group may span several hosts
    node_rank: int = 0  # this host's --node-rank; only node 0 writes records
    rdzv_endpoint: str = ""  # host:port of the c10d rendezvous; "" picks a free port on 127.0.0.1
    launcher: str = ""  # a command template that replaces `python -m torch.distributed.run` (a cluster's own)
    auto: bool = False  # tp = "auto": degrees from the model's heads and the visible devices (harness.degrees)
    max_tp: int = 8  # [parallel] max: the largest degree "auto" picks (on CPU the only cap)
    why: str = ""  # how "auto" chose, said in the report, the dry run and a skipped tp-invariance check

    @property
    def multi(self) -> bool:
        """More than one degree, one above 1, or "auto": jobs and checks are named per degree."""
        return self.auto or self.tp != (1,)

    def job_name(self, profile: str, tp: int) -> str:
        return f"{profile}-tp{tp}" if self.multi else profile


@dataclass(frozen=True)
class Suite:
    name: str
    path: str
    model: ModelSpec
    generation: Generation
    prompts: tuple[Prompt, ...]
    schedules: tuple[Schedule, ...]
    profiles: tuple[Profile, ...]
    seed: int = 0
    timeout_s: float = 1800.0
    description: str = ""
    perf: Perf | None = None  # a [perf] section: latency is sampled over passes and gated
    baselines: BaselinePolicy = BaselinePolicy()
    model_overridden: bool = False  # --model replaced the suite's own model
    endpoint: Endpoint | None = None  # outputs come from an OpenAI-compatible server, not an in-process model
    server: Server | None = None  # ... which the harness starts per profile
    parallel: Parallel = Parallel()
    devices: tuple[str, ...] = DEVICES  # [suite] devices: where the suite means something; elsewhere it is skipped
    localize: Localize = Localize()
    left_out: tuple[str, ...] = ()  # profiles the file has for other devices only: not run here, said in one line

    def skipped_here(self) -> str:
        """Why this suite does not run on the chosen device ("" when it does): one line for every check."""
        if self.model.device in self.devices:
            return ""
        return f"suite {self.name} runs on {', '.join(self.devices)}; skipped on {self.model.device}"

    def profile(self, name: str) -> Profile:
        for p in self.profiles:
            if p.name == name:
                return p
        raise SuiteError(f"{self.path}: no profile {name!r}{did_you_mean(name, [p.name for p in self.profiles])}")

    def with_overrides(
        self,
        *,
        model: str | None = None,
        device: str | None = None,
        profiles: list[str] | None = None,
        adapter: str | None = None,
        endpoint: str | None = None,
    ) -> Suite:
        """The suite as run: command-line choices replace the file's. `endpoint` is the URL of a server
        that is already running: the suite's [server] is not started."""
        if device is not None and device not in DEVICES:
            raise SuiteError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
        spec = dataclasses.replace(
            self.model,
            ref=model or self.model.ref,
            device=device or self.model.device,
            adapter=adapter or self.model.adapter,
        )
        chosen = self.profiles if not profiles else tuple(self.profile(n) for n in profiles)
        elsewhere = [p for p in chosen if p.devices and spec.device not in p.devices]
        if profiles and elsewhere:
            p = elsewhere[0]
            raise SuiteError(
                f"--profile {p.name}: it runs on {', '.join(p.devices)} only ([profiles.{p.name}] devices), "
                f"not on {spec.device}"
            )
        chosen = tuple(p.on_device(spec.device) for p in chosen if p not in elsewhere)
        if not chosen:
            raise SuiteError(f"{self.path}: no profile runs on {spec.device} (each lists other devices)")
        ep, server = self.endpoint, self.server
        if endpoint is not None:
            if ep is None:
                raise SuiteError(
                    f"--endpoint: {self.path} has no [endpoint] or [server] section; it runs an in-process model"
                )
            ep, server = dataclasses.replace(ep, base_url=base_url(endpoint, "--endpoint")), None
        return dataclasses.replace(
            self,
            model=spec,
            profiles=chosen,
            left_out=self.left_out + tuple(f"{p.name} (runs on {', '.join(p.devices)})" for p in elsewhere),
            endpoint=ep,
            server=server,
            model_overridden=self.model_overridden or spec.ref != self.model.ref,
        )

    @property
    def case_hash(self) -> str:
        """Hash over everything that shapes outputs, except how they are run (profile, device, adapter)."""
        served = {} if self.endpoint is None else {"api": self.endpoint.api, "ignore_eos": self.endpoint.ignore_eos}
        return _hash(
            {
                "model": [self.model.ref, self.model.dtype],
                "generation": _generation_case(self.generation),
                **({"endpoint": served} if served else {}),
                "prompts": [_prompt_case(p) for p in self.prompts],
                "schedules": [dataclasses.asdict(s) for s in self.schedules],
            }
        )

    def profile_hash(self, profile: Profile) -> str:
        return _hash([self.case_hash, profile.env, profile.torch_deterministic])


def _generation_case(g: Generation) -> dict[str, Any]:
    d = dataclasses.asdict(g)
    del d["close_k"]  # how outputs are judged, not what they are: baselines stay comparable when it changes
    return d


def _prompt_case(p: Prompt) -> dict[str, Any]:
    d = dataclasses.asdict(p)
    if p.attachments:
        d["attachments"] = [[a.mime, a.sha256] for a in p.attachments]  # content, not where this checkout keeps it
    else:
        del d["attachments"]  # text-only suites keep the hash their baselines were made under
    return d


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
