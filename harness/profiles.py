"""The catalogue of determinism switches by the library that reads them, and the paths that load each library, so
that a report (and the dry run) can say, flag by flag, "set, not read on this path" where that is so.

A switch is an environment variable read by one library at its start-up: ATB (Ascend Transformer Boost: the fused
ops of MindIE's atb_llm models and the ATB ops vLLM-Ascend calls), ATB_LLM (atb_llm itself), HCCL and LCCL
(collectives), aclnn (the CANN operator API behind torch_npu's eager ops), cuBLAS, NCCL, vLLM, MKL, oneDNN, ATen,
OpenMP. On CPU, ATen, oneDNN and MKL read their instruction-set pins on every in-process path; harness.cpupin reads
back what they ran with. A path is the engine that runs the model (transformers in the worker, vLLM or vLLM-Ascend,
MindIE, a server the harness does not know), its device and its tensor parallel degree; it loads some of those
libraries. The `hf`
adapter on npu runs torch_npu's eager aclnn ops: no ATB, ATB_LLM or LCCL, and HCCL only in a process group on hccl.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .suite import Profile, Suite

READ, MAYBE, NOT_READ, UNKNOWN = "read", "maybe", "not read", "unknown"
BACKENDS = {"cpu": "gloo", "cuda": "NCCL", "npu": "HCCL"}  # the process group's backend of a worker group


@dataclass(frozen=True)
class Flag:
    reader: str  # the library that reads it
    does: str  # what the value the profiles set does


# Sources (documentation page names) beside each entry. "ATB-Models README" is MindIE LLM's model repository
# (atb-models, section 确定性计算 "deterministic computing"); "vLLM-Ascend FAQ" is docs/source/faqs.md, "How to
# achieve deterministic inference?"; "CANN env reference" is the CANN Environment Variable Reference (envref).
FLAGS: dict[str, Flag] = {
    # ATB set_env.sh ("Shuffle-K 使能, 默认开"); ATB-Models README 确定性计算; vLLM-Ascend FAQ
    "ATB_MATMUL_SHUFFLE_K_ENABLE": Flag("ATB", "0 fixes the K-reduction order of ATB's matmul (about 10% slower)"),
    # ATB-Models README 确定性计算 (with ATB_MATMUL_SHUFFLE_K_ENABLE=0); VeRL's Ascend precision-alignment guide
    "CLOSE_MATMUL_K_SHIFT": Flag("ATB", "1: no K-axis shift in ATB's matmul"),
    # ATB-Models README 确定性计算 (LCOC off for results that hold across batch sizes); vLLM-Ascend FAQ
    "ATB_LLM_LCOC_ENABLE": Flag("ATB_LLM", "0: no communication/computation overlap (LCOC) in atb_llm models"),
    # CANN env reference: HCCL_DETERMINISTIC (AllReduce, ReduceScatter, Reduce; true|false, strict on later CANN)
    "HCCL_DETERMINISTIC": Flag("HCCL", "true (or strict, on later CANN): deterministic HCCL reductions"),
    # CANN env reference: HCCL_OP_EXPANSION_MODE; ATB-Models README (leave "AIV" off when results must repeat)
    "HCCL_OP_EXPANSION_MODE": Flag("HCCL", "AIV: collectives expanded on the vector cores (LCCL's path)"),
    # MindSpore Transformers environment variables (LCCL_DETERMINISTIC: order-preserving AllReduce, rank size <= 8);
    # ATB-Models README 确定性计算; vLLM-Ascend FAQ
    "LCCL_DETERMINISTIC": Flag("LCCL", "1: deterministic (order-preserving) LCCL AllReduce"),
    # cuBLAS documentation, "Results reproducibility"; PyTorch "Reproducibility" notes
    "CUBLAS_WORKSPACE_CONFIG": Flag("cuBLAS", ":4096:8 lets cuBLAS run deterministically"),
    # CUDA Toolkit documentation (cuBLAS and cuDNN, "TF32"): a global override of every TF32 setting
    "NVIDIA_TF32_OVERRIDE": Flag("cuBLAS", "0: no TF32 in cuBLAS or cuDNN, whatever torch's allow_tf32 says"),
    # NCCL documentation, "Environment Variables": NCCL_ALGO
    "NCCL_ALGO": Flag("NCCL", "fixes the NCCL reduction algorithm"),
    # vLLM documentation, "Batch invariance" (VLLM_BATCH_INVARIANT); vLLM-Ascend's batch-invariance notes
    "VLLM_BATCH_INVARIANT": Flag("vLLM", "1: vLLM's batch-invariant kernels"),
    # oneMKL Developer Guide, "Conditional Numerical Reproducibility" (MKL_CBWR): AUTO, COMPATIBLE, SSE2 ... AVX512;
    # on a non-Intel CPU only AUTO and COMPATIBLE are taken (others fall back to AUTO, read back by harness.cpupin)
    "MKL_CBWR": Flag("MKL", "COMPATIBLE: one code path on every x86 CPU, Intel or AMD (float32 GEMMs: other bits)"),
    # oneDNN documentation, "CPU Dispatcher Control" (ONEDNN_MAX_CPU_ISA: SSE41, AVX, AVX2, AVX512_CORE, ...)
    "ONEDNN_MAX_CPU_ISA": Flag("oneDNN", "AVX2: oneDNN's kernels no wider than AVX2 (no bf16 matmul through oneDNN)"),
    # PyTorch documentation, environment variables (ATEN_CPU_CAPABILITY: default, avx2, avx512; lower case)
    "ATEN_CPU_CAPABILITY": Flag("ATen", "avx2: ATen's vectorised CPU kernels (softmax, norms, bf16 GEMM) at AVX2"),
}
# Any other variable by its prefix: the library whose namespace it is in (the longest prefix wins).
PREFIXES = {
    "ATB_LLM_": "ATB_LLM",
    "ATB_": "ATB",
    "HCCL_": "HCCL",
    "LCCL_": "LCCL",
    "NCCL_": "NCCL",
    "CUBLAS_": "cuBLAS",
    "NVIDIA_TF32_": "cuBLAS",
    "VLLM_": "vLLM",
    "MKL_": "MKL",
    "ONEDNN_": "oneDNN",
    "DNNL_": "oneDNN",
    "OMP_": "OpenMP",
    "PYTORCH_NPU_": "aclnn",
    "TASK_QUEUE_ENABLE": "aclnn",
}
TORCH_DETERMINISTIC = "torch.use_deterministic_algorithms"
# What each library is, for the notes.
LIBRARIES = {
    "ATB": "ATB (Ascend Transformer Boost: MindIE's atb_llm models, the ATB ops vLLM-Ascend calls)",
    "ATB_LLM": "atb_llm (MindIE's model library)",
    "HCCL": "HCCL (a process group on hccl)",
    "LCCL": "LCCL (ATB's collectives: MindIE, vLLM-Ascend with HCCL_OP_EXPANSION_MODE=AIV)",
    "aclnn": "aclnn (torch_npu's eager ops)",
    "cuBLAS": "cuBLAS",
    "NCCL": "NCCL (a process group on nccl)",
    "vLLM": "vLLM",
    "MKL": "MKL",
    "oneDNN": "oneDNN",
    "ATen": "ATen",
    "OpenMP": "OpenMP",
    "gloo": "gloo",
}


def reader(name: str) -> str:
    """The library that reads a variable: the catalogue's entry, else its prefix's library, else ""."""
    if name in FLAGS:
        return FLAGS[name].reader
    if name == TORCH_DETERMINISTIC:
        return "ATen"
    return next((lib for p, lib in sorted(PREFIXES.items(), key=lambda e: -len(e[0])) if name.startswith(p)), "")


@dataclass(frozen=True)
class RunPath:
    """What runs the model: `engine` hf (transformers in the worker; `transformers serve` too), vllm (vLLM, or
    vLLM-Ascend on npu, in the worker or as its server), mindie (MindIE Service: atb_llm models), server (another
    server command), external (a server already running) or adapter:NAME (a plugin's); its device and degree."""

    engine: str
    device: str
    tp: int = 1
    served: bool = False  # the engine runs as a server the harness started with the profile's variables

    def libraries(self) -> dict[str, str]:
        """Library -> READ (this path loads it), MAYBE (loaded in some configurations of this path) or UNKNOWN."""
        if self.engine in ("external", "server") or self.engine.startswith("adapter:"):
            return {}
        libs = {"ATen": READ, "OpenMP": READ}
        libs.update(
            {"cpu": {"MKL": READ, "oneDNN": READ}, "cuda": {"cuBLAS": READ}, "npu": {"aclnn": READ}}.get(
                self.device, {}
            )
        )
        if self.engine == "hf" and self.tp > 1:
            libs[BACKENDS.get(self.device, "gloo")] = READ
        if self.engine == "vllm":
            libs["vLLM"] = READ
            libs[BACKENDS.get(self.device, "gloo")] = MAYBE  # when the engine's own tensor parallel size > 1
            if self.device == "npu":
                # vLLM-Ascend's attention and cache ops are ATB ops through torch_npu; its FAQ lists LCCL_DETERMINISTIC
                # and ATB_LLM_LCOC_ENABLE too, without saying which of its ops read them
                libs.update({"ATB": READ, "LCCL": MAYBE, "ATB_LLM": MAYBE})
        if self.engine == "mindie" and self.device == "npu":
            libs.update({"ATB": READ, "ATB_LLM": READ, "HCCL": MAYBE, "LCCL": MAYBE})  # collectives: worldSize > 1
        return libs

    def status(self, name: str) -> str:
        libs = self.libraries()
        if not libs:
            return UNKNOWN
        return libs.get(reader(name), NOT_READ)

    def describe(self) -> str:
        what = {
            "hf": ("transformers serve" if self.served else "transformers in the worker")
            + {"npu": " (torch_npu's eager aclnn ops)", "cuda": " (cuBLAS)", "cpu": " (MKL / oneDNN)"}.get(
                self.device, ""
            ),
            "vllm": ("vLLM-Ascend" if self.device == "npu" else "vLLM") + (" (served)" if self.served else ""),
            "mindie": "MindIE (atb_llm models on ATB)",
            "server": "a server the harness does not know",
            "external": "a server already running",
        }.get(self.engine, self.engine)
        group = f", tp {self.tp} on {BACKENDS.get(self.device, 'gloo')}" if self.engine == "hf" and self.tp > 1 else ""
        return f"{what} on {self.device}{group}"


def run_path(suite: Suite, tp: int = 1) -> RunPath:
    """The path a suite's worker (at degree `tp`) runs on: its adapter, or its server's program."""
    dev = suite.model.device
    if suite.endpoint is None:
        adapter = suite.model.adapter
        return RunPath(adapter if adapter in ("hf", "vllm") else f"adapter:{adapter}", dev, tp)
    if suite.server is None:
        return RunPath("external", dev)
    cmd = suite.server.command.lower()
    engine = "mindie" if "mindie" in cmd else "vllm" if "vllm" in cmd else "hf" if "transformers" in cmd else "server"
    return RunPath(engine, dev, served=True)


def unread(profile: Profile, paths: list[RunPath]) -> list[str]:
    """The profile's variables with a known reader that none of `paths` loads: set, not read on this path."""
    return [k for k, _ in profile.env if reader(k) and all(p.status(k) == NOT_READ for p in paths)]


def read_flags(profile: Profile, paths: list[RunPath]) -> list[str]:
    return [k for k, _ in profile.env if reader(k) and any(p.status(k) in (READ, MAYBE) for p in paths)]


def note(profile: Profile, device: str, paths: list[RunPath] | None = None) -> str:
    """One line for a profile whose variables are set but not read on this path, naming what reads each."""
    paths = paths or [RunPath("hf", device)]
    off = unread(profile, paths)
    if not off:
        return ""
    readers = sorted({reader(k) for k in off})
    where = "; ".join(LIBRARIES.get(r, r) for r in readers)
    they = "they cannot" if len(off) > 1 else "it cannot"
    return (
        f"{', '.join(off)}: set, not read on this path ({describe(paths)}), so {they} change its results; "
        f"read by {where}"
    )


def describe(paths: list[RunPath]) -> str:
    """The path of a suite's jobs: one, or one engine and device at several degrees."""
    if len(paths) == 1:
        return paths[0].describe()
    return f"{RunPath(paths[0].engine, paths[0].device).describe()}, at tp {', '.join(str(p.tp) for p in paths)}"


def flags_note(suite: Suite, paths: list[RunPath] | None = None) -> str:
    """When no profile's flags are read on this path, every profile ran the same arithmetic: say so, so that a
    passing `deterministic` profile is not read as evidence about the flags."""
    names = ", ".join(p.name for p in suite.profiles)
    same = len({(p.env, p.torch_deterministic) for p in suite.profiles}) == 1
    if len(suite.profiles) > 1 and same and any(p.device_env for p in suite.profiles):
        return (
            f"{names} ran with the same variables on {suite.model.device}: they differ only on other devices "
            "(device_env), so their verdicts here say nothing about those switches"
        )
    if suite.endpoint is not None and suite.server is None:
        return ""  # a server already running: served_notes says its flags could not be applied
    paths = paths or [run_path(suite, tp) for tp in suite.parallel.tp]
    flagged = [p for p in suite.profiles if p.env]
    if not flagged or any(read_flags(p, paths) for p in flagged) or any(not p.libraries() for p in paths):
        return ""
    torch_only = [p.name for p in suite.profiles if p.torch_deterministic]
    return (
        f"none of the profiles' flags are read on this path ({describe(paths)}): they are set, not read, and "
        f"{names} ran identical arithmetic"
        + (f" (apart from {TORCH_DETERMINISTIC} in {', '.join(torch_only)})" if torch_only else "")
        + "; their verdicts and any cost between them say nothing about those switches"
    )


PINNED = "portable"  # the shipped profile of CPU instruction-set pins (harness.cpupin)


def cost_profile(suite: Suite) -> str:
    """The profile whose latency against `default` is the determinism cost: `deterministic`, unless none of its
    switches is read on this path and `portable`'s are (on CPU: the instruction-set pins act, the Ascend switches
    do not), so that the cost a report shows is that of a switch that changes the arithmetic."""
    paths = [run_path(suite, tp) for tp in suite.parallel.tp]
    by = {p.name: p for p in suite.profiles}
    pinned, det = by.get(PINNED), by.get("deterministic")
    if pinned is not None and read_flags(pinned, paths) and (det is None or not read_flags(det, paths)):
        return PINNED
    return "deterministic"


def cost_label(suite: Suite) -> str:
    """What the determinism cost measures: the instruction-set pins where they act, or why it means less than it
    seems (the switches are set, not read on this path)."""
    if cost_profile(suite) == PINNED:
        return f"instruction-set pins: act on {suite.model.device.upper()}"
    if not flags_note(suite):
        return ""
    return f"flags set, not read on this path: any difference is noise or {TORCH_DETERMINISTIC}, not the switches"


# Collective-communication switches and what reads them: the process group's backend, or a library beside it.
COMM_FLAGS: dict[str, str] = {
    "HCCL_DETERMINISTIC": "hccl",
    "LCCL_DETERMINISTIC": "lccl (ATB's in-server collectives on Ascend)",
    "ATB_LLM_LCOC_ENABLE": "ATB models (MindIE's compute/communication overlap)",
    "NCCL_ALGO": "nccl",
}


def group_note(profile: str, tp: int, meta: dict[str, Any]) -> str:
    """What a worker group's ranks actually ran with (read back in each rank), flag by flag, and whether the
    backend they used reads it: on gloo every HCCL/LCCL switch is set and ignored, and the report must say so."""
    ranks = meta.get("ranks") or []
    if tp <= 1 or not ranks:
        return ""
    backend = str(ranks[0].get("backend", "?"))
    parts = []
    for flag, reader in COMM_FLAGS.items():
        values = sorted({str(r.get("env", {}).get(flag)) for r in ranks if flag in r.get("env", {})})
        if not values:
            continue
        same = values[0] if len(values) == 1 else f"{'/'.join(values)} (ranks differ)"
        where = f"read by {backend}" if reader == backend else f"read by {reader}; ignored by {backend}"
        parts.append(f"{flag}={same} ({where})")
    head = f"profile {profile} tp{tp}: {len(ranks)} ranks on {backend}"
    return f"{head} ran with " + "; ".join(parts) if parts else f"{head}, no collective-communication flags set"
