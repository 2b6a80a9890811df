"""A generated determinism run of any size, analysed and reported by the real pipeline functions: for report.html
tests and for timing its build on 10,000 sequences (`python -m tests.synthetic_run 10000`)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from harness import pipeline, report
from harness.analysis import latency
from harness.jobs import JobOutcome
from harness.records import Record
from harness.run import RunDir
from harness.suite_parse import parse

WORDS = "the a of to and in is it you that was for on are with as I his they be at one have this from".split()
DEVICE = {"device": "cpu", "cpu_capability": "avx512", "cpu_model": "intel-6-167", "threads": "2", "torch": "2.13.0"}


def suite(prompts: int):
    data = {
        "suite": {"name": "synthetic", "version": 1},
        "model": {"ref": "smollm2-135m", "dtype": "bfloat16"},
        "generation": {"max_new_tokens": 8},
        "prompts": {"items": [{"id": f"p{i:04d}", "text": f"prompt {i}"} for i in range(prompts)]},
        "schedules": [{"kind": "solo"}, {"kind": "batch-sizes", "sizes": [4, 16]}],
        "profiles": {"default": {"expect": {"cpu": "vary"}}},
    }
    return parse(data, "synthetic.toml", base=Path("."))


def records(sequences: int, prompts: int, steps: int, seed: int = 0) -> list[Record]:
    """Solo references, then batch sequences that are bitwise, differ in bits, or diverge at a random step."""
    rng = random.Random(seed)
    out = []
    refs: dict[int, list[int]] = {}
    for i in range(sequences):
        p = i % prompts
        solo = i < prompts
        toks = refs.setdefault(p, [rng.randrange(len(WORDS)) for _ in range(steps)])
        fps = [f"{p:08x}{s:08x}" for s in range(steps)]
        lps = [[-0.05, -0.3 - rng.random(), -2.0, -2.5, -3.0] for _ in range(steps)]
        level = "ref" if solo else rng.choice(["bitwise", "bits", "close", "diverged"])
        at = rng.randrange(1, steps)
        if level != "ref" and level != "bitwise":
            fps = fps[:at] + [f"{f}x" for f in fps[at:]]
        if level in ("close", "diverged"):
            toks = toks[:at] + [(t + 1) % len(WORDS) for t in toks[at:]]
        size = 1 if solo else rng.choice([4, 16])
        out.append(
            Record(
                profile="default",
                prompt_id=f"p{p:04d}",
                schedule="solo" if solo else "batch-sizes",
                kind="solo" if solo else "batch-sizes",
                batch_id=f"{'solo' if solo else 'batch-sizes'}/{i}",
                batch=[f"p{p:04d}"] * size,
                position=rng.randrange(size),
                tokens=list(toks),
                pieces=[" " + WORDS[t] for t in toks],
                text="".join(" " + WORDS[t] for t in toks),
                finish_reason="length",
                fingerprints=fps,
                # a near-tie: each side's token is in the other's top-k; a divergence: it is not
                topk_ids=[
                    [t, (t + 1) % len(WORDS) if level == "close" else (t + 7) % len(WORDS), 40, 41, 42] for t in toks
                ],
                topk_logprobs=lps,
                token_times=[0.02 + 0.01 * s * (1 + 0.1 * rng.random()) for s in range(steps)],
            )
        )
    return out


def token_text(i: int) -> str:
    """What an engine decodes each synthetic id to: the words, then the ids only ever seen as alternatives."""
    return " " + WORDS[i] if i < len(WORDS) else f" alt{i}"


def as_engine(recs: list[Record], engine: str) -> list[Record]:
    """The same sequences as the `vllm` adapter (vLLM in process) or a server (the `endpoint` adapter, logprobs on)
    writes them: each one's steps through that adapter's own code, then into a Record as the worker makes it."""
    from harness.adapters import endpoint

    from . import fake_vllm

    def record(r: Record, g) -> Record:
        keep = ("profile", "prompt_id", "schedule", "kind", "batch_id", "batch", "position", "repeat", "warmup")
        return Record(**{k: getattr(r, k) for k in keep}, **vars(g))

    usage = lambda r: {"prompt_tokens": 3, "completion_tokens": len(r.tokens)}  # noqa: E731
    if engine == "served":
        out = []
        for r in recs:
            steps = [
                endpoint.Step(token_text(t), lps[0], [(token_text(i), lp) for i, lp in zip(ids, lps)])
                for t, ids, lps in zip(r.tokens, r.topk_ids, r.topk_logprobs)
            ]
            out.append(record(r, endpoint.generated(list(r.pieces), list(r.token_times), steps, "length", usage(r))))
        return out
    assert engine == "vllm", engine
    answers = [
        fake_vllm.CompletionOutput(
            token_ids=list(r.tokens),
            logprobs=[
                fake_vllm.step(t, list(zip(ids, lps)), token_text)
                for t, ids, lps in zip(r.tokens, r.topk_ids, r.topk_logprobs)
            ],
            text=r.text,
        )
        for r in recs
    ]
    adapter = fake_vllm.adapter(answers, top_logprobs=max((len(ids) for r in recs for ids in r.topk_ids), default=1))
    with fake_vllm.installed():
        gens = [g for r in recs for g in adapter.generate([{"id": r.prompt_id, "text": "prompt", "chat": False}])]
    return [record(r, g) for r, g in zip(recs, gens)]


def build(
    out: Path, sequences: int, prompts: int, steps: int, engine: str = "hf", model_dir: str = ""
) -> report.RunResult:
    """engine: "hf" (the records as the hf adapter writes them, real ids), "vllm" (vLLM in process: ids and their
    text) or "served" (a server's logprobs: text only). model_dir: the run's model folder (its tokenizer.json)."""
    s = suite(prompts)
    rd = RunDir.create(out, s.name)
    recs = records(sequences, prompts, steps)
    if engine != "hf":
        recs = as_engine(recs, engine)
    path = rd.path / "records" / "default.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(r.to_json() + "\n" for r in recs)
    job = JobOutcome(
        name="default",
        profile="default",
        status="ok",
        returncode=0,
        wall_s=1.0,
        expected=sequences,
        completed=sequences,
        records=str(path),
        log="",
        meta={"device": DEVICE, "load_s": {"import": 1.5, "weights": 0.8, "to_device": 0.1}, "tokens_per_s": 90.0},
    )
    verdicts = pipeline.analyse(s, [job], {"default": recs})
    res = report.RunResult(
        suite=s,
        run_id=rd.run_id,
        run_dir=rd.path,
        jobs=[job],
        verdicts=verdicts,
        exit_code=0,
        latency={"default": latency.samples(recs)},
        records={"default": recs},
        model_dir=model_dir,
    )
    report.write(res)
    return res


def main() -> int:
    from harness import html

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("/tmp/synthetic-runs")
    res = build(out, n, prompts=max(1, n // 20), steps=256)
    t = time.perf_counter()
    notes = html.write(res, res.run_dir, None, [])
    dt = time.perf_counter() - t
    size = (res.run_dir / "report.html").stat().st_size
    print(f"{n} sequences x 256 steps: report.html {size / 1e6:.2f} MB in {dt:.1f} s ({res.run_dir}) {notes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
