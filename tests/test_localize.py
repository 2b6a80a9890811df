"""`harness localize`: the first module and operator whose output bits differ for a compared row.

The comparison functions on hand-made tensors, case selection and the summary line on hand-made records (fast);
then real runs of a tiny random Llama through adapters installed as a real distribution: `rowwise` makes it batch-
invariant (eager attention, every linear layer as a multiply and a row-wise sum), `variant` adds to that a batch-
size-dependent epsilon in the last bits of layer 0's mlp.down_proj, which localize must name, with its operator.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.localize import cases, summary
from harness.localize.compare import (
    Ctx,
    align,
    code_before,
    compare_pairs,
    first_difference,
    first_over,
    logits_metrics,
    metrics,
    take_row,
)

from .helpers import (
    cli_in_process,
    install_adapter,
    job,
    load_report,
    only_run_dir,
    record,
    refused,
    run_cli,
    write_suite,
)

# ---- the comparison, on hand-made tensors ----------------------------------------------------------------------


def test_rows_line_up_across_padding_and_batch_sizes():
    ref = torch.arange(12.0).reshape(1, 3, 4)  # solo: three positions, no padding
    other = torch.zeros(2, 5, 4)
    other[1, 2:] = ref[0]  # row 1 of two, left-padded by two positions
    ca, cb = Ctx(rows=1, row=0, q_len=3, kv_len=3, pad=0), Ctx(rows=2, row=1, q_len=5, kv_len=5, pad=2)
    x, y = align(take_row(ref, ca), ca, take_row(other, cb), cb)
    assert x.shape == y.shape == (3, 4) and torch.equal(x, y)
    # a linear layer's matmul sees batch and positions flattened
    x, y = align(take_row(ref.reshape(3, 4), ca), ca, take_row(other.reshape(10, 4), cb), cb)
    assert torch.equal(x, y)
    # a decode step: one new position, attention over the padded history (the padding dropped)
    da, db = Ctx(1, 0, 1, 4, 0), Ctx(2, 1, 1, 6, 2)
    scores_a, scores_b = torch.rand(1, 2, 1, 4), torch.rand(2, 2, 1, 6)
    scores_b[1, :, :, 2:] = scores_a[0]
    x, y = align(take_row(scores_a, da), da, take_row(scores_b, db), db)
    assert x.shape == (2, 1, 4) and torch.equal(x, y)
    # a weight has no batch dimension: compared whole
    w = torch.rand(4, 4)
    x, y = align(take_row(w, ca), ca, take_row(w.clone(), cb), cb)
    assert torch.equal(x, w) and torch.equal(y, w)


def test_metrics_count_ulps_and_msit_figures():
    a = torch.tensor([1.0, 2.0, -0.5])
    b = torch.nextafter(a, torch.full_like(a, math.inf))  # one ulp up everywhere
    m = metrics(a, b)
    assert m["equal"] is False and m["element_ulps"] == 1
    assert m["max_abs"] == 2.0**-22  # the ulp at 2.0
    assert m["ulps"] == 1.0 and m["max_rel"] == pytest.approx(2.0**-23) == m["max_rel_element"]
    assert m["cosine"] == pytest.approx(1.0)
    same = metrics(a, a.clone())
    assert same["equal"] is True and same["max_abs"] == 0.0 and same["ulps"] == 0.0
    assert metrics(torch.tensor([0.0]), torch.tensor([-0.0]))["equal"] is False  # bits, not values


def test_logits_metrics_kl_margin_and_flip():
    ref, other = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 0.0])
    m = logits_metrics(ref, other)
    assert m["argmax_flips"] is True and (m["ref_argmax"], m["other_argmax"]) == (0, 1)
    assert m["ref_margin"] == pytest.approx(1.0) and m["other_margin"] == pytest.approx(1.0)
    assert m["kl"] > 0
    same = logits_metrics(ref, ref.clone())
    assert same["kl"] == 0.0 and same["argmax_flips"] is False


def test_first_differing_module_and_thresholds():
    ctx = Ctx(1, 0, 2, 2, 0)
    base = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    nudged = base.clone()
    nudged[0, 0] = torch.nextafter(nudged[0, 0], torch.tensor(math.inf))

    def cap(t):
        return take_row(t[None], ctx)

    ref = [
        ("model.embed", cap(base)),
        ("model.layers.0.mlp", cap(base)),
        ("model.layers.0", cap(base)),
        ("lm", cap(base)),
    ]
    other = [
        ("model.embed", cap(base)),
        ("model.layers.0.mlp", cap(nudged)),
        ("model.layers.0", cap(base * 1.01)),
        ("lm", cap(base * 1.1)),
    ]
    entries = compare_pairs(ref, ctx, other, ctx)
    assert [e["equal"] for e in entries] == [True, False, False, False]
    assert first_difference(entries)["name"] == "model.layers.0.mlp"
    assert first_over(entries) == {"first_over_ulp": "model.layers.0", "first_over_rel": "model.layers.0"}
    # the two sides ran different code: named, and nothing after it is compared
    entries = compare_pairs(ref, ctx, [ref[0], ("model.other", cap(base))], ctx)
    assert entries[-1] == {
        **entries[-1],
        "why": "different code",
        "name": "model.layers.0.mlp",
        "other_name": "model.other",
    }
    assert first_difference(entries)["why"] == "different code"


def test_sides_that_run_different_code_are_matched_up_again():
    """A padded batch prepares a mask the solo batch does not, then both run the attention kernel: the kernel is
    the first differing operator, and the extra operators are what led to it."""
    ctx = Ctx(1, 0, 2, 2, 0)
    x = take_row(torch.ones(1, 2, 3), ctx)
    y = take_row(torch.full((1, 2, 3), 2.0), ctx)
    ref = [("aten::mm", x), ("aten::attn", x), ("aten::view", x)]
    other = [("aten::mm", x), ("aten::scalar_tensor", x), ("aten::where", x), ("aten::attn", y), ("aten::view", y)]
    entries = compare_pairs(ref, ctx, other, ctx)
    op = first_difference(entries)
    assert (op["name"], op["index"], op["other_index"]) == ("aten::attn", 1, 3)
    before = code_before(entries, op)
    assert before["ref_ran"] == [] and before["other_ran"] == ["aten::scalar_tensor", "aten::where"]


# ---- case selection and the summary line, on hand-made records -------------------------------------------------


def _run(records) -> list[cases.JobRun]:
    return [cases.JobRun(job(), Path("jobs/default.json"), list(records))]


def _records():
    return [
        record("a", kind="solo", batch_id="solo/0", tokens=(1, 2, 3)),
        record("b", kind="solo", batch_id="solo/1", tokens=(4, 5, 6)),
        # a's bits move at step 1, b's at step 0: b is the worse
        record(
            "a",
            kind="batch-sizes",
            batch_id="bs/0",
            batch=["a", "b"],
            position=0,
            tokens=(1, 2, 3),
            fingerprints=["fp1", "x", "x"],
        ),
        record(
            "b",
            kind="batch-sizes",
            batch_id="bs/0",
            batch=["a", "b"],
            position=1,
            tokens=(4, 5, 6),
            fingerprints=["x", "x", "x"],
        ),
        record("a", kind="batch-sizes", batch_id="bs/1", batch=["b", "a"], position=1, tokens=(1, 2, 3)),
    ]


def test_select_takes_the_worst_case_with_every_row_tokens():
    (case,) = cases.select(_run(_records()), profile=None, prompt=None, batch=None, max_cases=3)
    assert (case.prompt_id, case.first_bit_step, case.property) == ("b", 0, "batch-invariance")
    assert case.reference.batch_id == "solo/1" and case.reference.tokens == ((4, 5, 6),)
    assert case.compared.position == 1 and case.compared.tokens == ((1, 2, 3), (4, 5, 6))
    assert cases.Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    (named,) = cases.select(_run(_records()), profile=None, prompt="a", batch="bs/0", max_cases=3)
    assert named.first_bit_step == 1


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"profile": "nope"}, ["profile 'nope' is not in this run", "'default'"]),
        ({"prompt": "zz"}, ["prompt 'zz' is not in this run"]),
        ({"batch": "bs/9"}, ["batch 'bs/9' is not in this run"]),
        ({"prompt": "a", "batch": "bs/1"}, ["bitwise identical to its reference: nothing to localise"]),
        ({"batch": "solo/0"}, ["no compared sequence there"]),
    ],
)
def test_select_refuses_what_is_not_there(kw, words):
    with pytest.raises(HarnessError) as e:
        cases.select(_run(_records()), **{"profile": None, "prompt": None, "batch": None, "max_cases": 3, **kw})
    assert e.value.code == 2 and all(w in str(e.value) for w in words)


def test_identical_records_give_no_case():
    recs = [r for r in _records() if r.batch_id != "bs/0"]
    assert cases.select(_run(recs), profile=None, prompt=None, batch=None, max_cases=3) == []


def test_summary_line_reads_like_the_issue():
    entry = {
        "case": {
            "profile": "default",
            "property": "batch-invariance",
            "prompt_id": "p3",
            "first_bit_step": 0,
            "first_token_step": None,
            "reference": {"batch_id": "solo/3", "batch": ["p3"], "position": 0},
            "compared": {"batch_id": "batch-sizes/1", "batch": ["x"] * 8, "position": 4},
        },
        "status": "localized",
        "step": 0,
        "module": {"name": "model.layers.0.self_attn.q_proj", "index": 3},
        "first_output": "model.layers.0.self_attn.q_proj",
        "module_inputs_equal": True,
        "operator": {"name": "aten::mm", "ref_inputs": [[1, 576], [576, 576]], "other_inputs": [[8, 576], [576, 576]]},
        "layers_path": "model.layers",
        "layers": [{"layer": 29, "index": 400, "max_abs": 3e-6}],
        "logits": {"step": 0, "argmax_flips": False},
    }
    assert summary.line(entry).endswith(
        "batch variance enters at step 0 in layer 0 self_attn.q_proj (aten::mm, [1, 576] x [576, 576] solo vs "
        "[8, 576] batched), grows to 3e-06 by layer 29, flips no token"
    )


def test_code_between_modules_is_found_in_the_parent():
    from harness.localize.replay import _parent

    modules = [
        {"index": 0, "name": "model.layers.0.self_attn.q_proj"},
        {"index": 1, "name": "model.layers.0.self_attn.o_proj"},
        {"index": 2, "name": "model.layers.0.self_attn"},
        {"index": 3, "name": "model.layers.0.self_attn.q_proj#1"},
        {"index": 4, "name": "model.layers.0.self_attn#1"},
        {"index": 5, "name": "Llama"},
    ]
    assert _parent(modules, modules[1], "Llama")["name"] == "model.layers.0.self_attn"
    assert _parent(modules, modules[3], "Llama")["name"] == "model.layers.0.self_attn#1"  # the call that holds it
    assert _parent(modules, {"index": 4, "name": "model"}, "Llama")["name"] == "Llama"
    assert _parent(modules, modules[5], "Llama") is None
    entry = {
        "case": {
            "profile": "p",
            "property": "repeatability",
            "prompt_id": "a",
            "first_bit_step": 2,
            "first_token_step": 5,
            "reference": {"batch_id": "repeat/0", "batch": ["a", "b"], "position": 0},
            "compared": {"batch_id": "repeat/1", "batch": ["a", "b"], "position": 0},
        },
        "status": "localized",
        "step": 1,
        "module": {"name": "model.layers.0.self_attn", "index": 2},
        "first_output": "model.layers.0.self_attn.o_proj",
        "operator": {"name": "aten::bmm", "why": "different code", "other_name": "aten::mm"},
        "layers_path": "model.layers",
        "logits": {"step": 2, "argmax_flips": False},
        "replay_matches_records": {"reference": True, "compared": True},
    }
    line = summary.line(entry)
    assert (
        "run-to-run variance enters at step 1 in layer 0 self_attn's own code (before layer 0 self_attn.o_proj)" in line
    )
    assert "(different operators: aten::bmm reference vs aten::mm compared)" in line
    assert line.endswith("flips no token here (the run's tokens diverge at step 5)")
    clean = summary.line({**entry, "status": "no module differs"})
    assert clean.endswith("no module differs through step 2, where the records' logits bits differ")


def test_the_job_environment_is_kept_for_the_replay(tmp_path: Path):
    from harness.jobs import env_path, load_env, save_env
    from harness.localize.command import job_env

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    path = env_path(jobs / "default.json")
    assert path.name == "default.env.json"
    save_env(path, {"ATB_X": "1", "MY_API_KEY": "secret", "OMP_NUM_THREADS": None})
    assert "secret" not in path.read_text()
    assert load_env(path) == {"ATB_X": "1", "OMP_NUM_THREADS": None}  # the secret is inherited, not written
    run = _run([])[0]
    run.path = jobs / "default.json"
    assert job_env(tmp_path, run) == {"ATB_X": "1", "OMP_NUM_THREADS": None}
    # a run folder from before the file: the variables the worker recorded
    path.unlink()
    (tmp_path / "records").mkdir()
    meta = {"env": {"OMP_NUM_THREADS": "2", "HARNESS_PID": "1", "HCCL_KEY": "<redacted>"}}
    (tmp_path / "records" / "default.meta.json").write_text(json.dumps(meta))
    assert job_env(tmp_path, run) == {"OMP_NUM_THREADS": "2"}


# ---- real runs of a tiny model ---------------------------------------------------------------------------------

ADAPTERS = """
import torch

from harness.adapters.hf import HFAdapter


def rowwise(linear):
    # x @ W.T as a multiply and a sum over each row: no matmul kernel that depends on the number of rows
    linear.forward = lambda x: (x.unsqueeze(-2) * linear.weight).sum(-1)


class RowwiseAdapter(HFAdapter):
    \"\"\"The real adapter on a batch-invariant model: eager attention, row-wise linear layers.\"\"\"

    def load(self):
        phases = super().load()
        self.model.set_attn_implementation("eager")
        for m in self.model.modules():
            if isinstance(m, torch.nn.Linear):
                rowwise(m)
        return phases


class VariantAdapter(RowwiseAdapter):
    \"\"\"The same, with layer 0's mlp.down_proj off by a batch-size-dependent epsilon in the last bits.\"\"\"

    def load(self):
        phases = super().load()
        down = self.model.model.layers[0].mlp.down_proj
        inner = down.forward
        down.forward = lambda x: inner(x) * (1.0 + 2.0**-22 * (x.shape[0] - 1))
        return phases
"""

# Prompts of one length (no padding): eager attention over the same positions in every batch.
SUITE = """
[suite]
name = "loc"
version = 1
[model]
ref = "{model}"
dtype = "float32"
[generation]
max_new_tokens = 3
[prompts]
items = [{{id = "a", text = "one two three", chat = false}}, {{id = "b", text = "the cat sat", chat = false}}, {{id = "c", text = "four five six", chat = false}}]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "batch-sizes"
sizes = [3]
[profiles.default]
expect = {{ cpu = "report" }}
"""


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("localize")
    env = {
        **install_adapter(tmp, "rowwise", "rowwise_adapter", ADAPTERS, "RowwiseAdapter"),
        **install_adapter(tmp, "variant", "variant_adapter", ADAPTERS, "VariantAdapter"),
    }
    suite = write_suite(tmp / "loc.toml", SUITE.format(model=tiny_model))
    out = {"env": env, "tmp": tmp, "model": tiny_model}
    for adapter in ("rowwise", "variant"):
        p = run_cli("run", str(suite), "--adapter", adapter, "--out", str(tmp / adapter), env=env)
        assert p.returncode == 0, p.stderr
        out[adapter] = only_run_dir(tmp / adapter)
        out[f"{adapter}_report"] = load_report(tmp / adapter)
    return out


def _verdict(report: dict) -> dict:
    return next(v for v in report["verdicts"] if v["property"] == "batch-invariance")


@pytest.mark.process
def test_the_batch_variant_module_is_named_with_its_operator(runs):
    assert _verdict(runs["variant_report"])["bitwise"] == 0
    dump = runs["tmp"] / "dump"
    p = run_cli("localize", str(runs["variant"]), "--dump", str(dump), env=runs["env"])
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads((runs["variant"] / "localize.json").read_text())["localization"]
    assert entry["status"] == "localized" and entry["step"] == 0
    assert entry["module"]["name"] == entry["first_output"] == "model.layers.0.mlp.down_proj"
    assert entry["module"]["class"] == "Linear" and entry["module_inputs_equal"] is True
    op = entry["operator"]
    assert op["name"] == "aten::mul" and op["index"] == len(entry["operators"]) - 1  # the epsilon, after the sum
    assert all(o["equal"] for o in entry["operators"][:-1])
    assert op["ref_inputs"][0][0] == 1 and op["other_inputs"][0][0] == 3  # solo vs the batch of three
    assert entry["replay_matches_records"] == {"reference": True, "compared": True}
    assert entry["operator_pass_repeats"] is True
    before = [m for m in entry["modules"] if m["index"] < entry["module"]["index"]]
    assert before and all(m["equal"] for m in before)
    assert [la["layer"] for la in entry["layers"]] == [0, 1] and not entry["layers"][0]["equal"]
    assert entry["logits"]["argmax_flips"] is False and entry["logits"]["kl"] >= 0
    assert "layer 0 mlp.down_proj (aten::mul, [1, 3, 32] solo vs [3, 3, 32] batched)" in p.stdout
    assert "flips no token" in p.stdout
    manifest = json.loads((dump / "case1" / "manifest.json").read_text())
    assert (manifest["module"], manifest["operator"], manifest["step"]) == (
        "model.layers.0.mlp.down_proj",
        "aten::mul",
        0,
    )
    assert manifest["row"] == {"reference": 0, "compared": entry["case"]["compared"]["position"]}
    import numpy as np

    files = {f["file"]: f for f in manifest["files"]}
    ref = np.load(dump / "case1" / "model.layers.0.mlp.down_proj.reference.npy")
    other = np.load(dump / "case1" / "model.layers.0.mlp.down_proj.compared.npy")
    assert ref.shape == other.shape == (3, 32) and (ref != other).any()
    assert files["model.layers.0.mlp.down_proj.reference.npy"]["dtype"] == "float32"


@pytest.mark.process
def test_without_the_variant_module_no_module_differs(runs):
    assert _verdict(runs["rowwise_report"])["bitwise"] == _verdict(runs["rowwise_report"])["sequences"] == 3
    # identical runs localise nothing
    p = run_cli("localize", str(runs["rowwise"]), env=runs["env"])
    assert p.returncode == 0 and "nothing to localise" in p.stdout, p.stderr
    assert json.loads((runs["rowwise"] / "localize.json").read_text())["localization"] == []
    # the variant run's difference, replayed on the model without the variant module: no module differs
    copy = runs["tmp"] / "variant-copy"
    shutil.copytree(runs["variant"], copy)
    p = run_cli("localize", str(copy), "--adapter", "rowwise", env=runs["env"])
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads((copy / "localize.json").read_text())["localization"]
    assert entry["status"] == "no module differs" and "no module differs" in p.stdout


@pytest.mark.process
def test_bad_input_is_one_line(runs, tmp_path: Path):
    empty = tmp_path / "empty"
    (empty / "jobs").mkdir(parents=True)
    refused(*cli_in_process("localize", empty)[::2], "no records")
    refused(*cli_in_process("localize", tmp_path / "missing")[::2], "not a folder")
    refused(*cli_in_process("localize", runs["rowwise"], "--max-cases", "0")[::2], "positive")
    refused(*cli_in_process("localize", runs["rowwise"])[::2], "unknown adapter 'rowwise'")  # not installed here

    def cli(*args: str) -> tuple[int, str]:
        p = run_cli("localize", str(runs["rowwise"]), *args, env=runs["env"])
        return p.returncode, p.stderr

    refused(*cli("--profile", "other"), "profile 'other' is not in this run")
    refused(*cli("--prompt", "zz"), "prompt 'zz' is not in this run")
    refused(*cli("--prompt", "a", "--batch", "batch-sizes/0"), "bitwise identical to its reference")


@pytest.mark.process
def test_engines_it_cannot_hook_and_worker_failures(runs, tmp_path: Path):
    served = tmp_path / "served"
    shutil.copytree(runs["variant"], served)
    job = served / "jobs" / "default.json"
    job.write_text(json.dumps({**json.loads(job.read_text()), "adapter": "vllm"}))
    err = refused(*cli_in_process("localize", served)[::2], "cannot hook", "msit llm dump", "msprobe")
    assert "vllm" in err
    broken = tmp_path / "broken"
    shutil.copytree(runs["variant"], broken)
    job = broken / "jobs" / "default.json"
    job.write_text(json.dumps({**json.loads(job.read_text()), "model_dir": str(tmp_path / "no-model")}))
    p = run_cli("localize", str(broken), env=runs["env"])
    assert p.returncode == 3 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "would not load" in p.stderr and "Traceback" not in p.stderr


# ---- at the end of a run ------------------------------------------------------------------------------------


def _verdict_like(profile: str, prop: str, expect: str, passed: bool, level: str | None):
    from types import SimpleNamespace

    worst = None if level is None else SimpleNamespace(level=level)
    return SimpleNamespace(profile=profile, property=prop, expect=expect, passed=passed, worst=worst)


def test_the_end_of_a_run_localises_what_failed_or_was_only_close():
    from harness.localize.auto import wanted

    verdicts = [
        _verdict_like("default", "batch-invariance", "vary", True, "diverged"),  # a negative control that saw it
        _verdict_like("det", "batch-invariance", "report", True, "close"),  # only close
        _verdict_like("det", "repeatability", "bitwise", False, "tokens"),  # failed
        _verdict_like("det", "baseline", "bitwise", False, "diverged"),  # a baseline: not replayable
        _verdict_like("strict", "tp-invariance", "tokens", True, "tokens"),  # met, tokens
        _verdict_like("strict", "batch-invariance", "bitwise", True, None),  # bitwise
    ]
    assert wanted(verdicts) == {("det", "batch-invariance"), ("det", "repeatability")}


def test_localize_section_is_parsed_and_checked(tmp_path: Path):
    from harness.suite_parse import load

    base = SUITE.format(model=tmp_path)
    assert load(write_suite(tmp_path / "a.toml", base)).localize.auto is True
    off = load(write_suite(tmp_path / "b.toml", base + "[localize]\nauto = false\nmax_cases = 1\n")).localize
    assert (off.auto, off.max_cases) == (False, 1)
    with pytest.raises(Exception, match="max_cases"):
        load(write_suite(tmp_path / "c.toml", base + "[localize]\nmax_cases = 0\n"))
    with pytest.raises(Exception, match="autom"):
        load(write_suite(tmp_path / "d.toml", base + "[localize]\nautomatic = true\n"))


@pytest.mark.process
def test_a_failed_verdict_is_localised_in_the_reports(runs):
    """The variant model against a profile that expects bitwise: the run fails (exit 1, as before), and its
    reports say where the variance enters, without a separate command."""
    suite = write_suite(runs["tmp"] / "strict.toml", SUITE.format(model=runs["model"]).replace('"report"', '"bitwise"'))
    out = runs["tmp"] / "auto"
    p = run_cli("run", str(suite), "--adapter", "variant", "--out", str(out), env=runs["env"])
    assert p.returncode == 1, p.stderr
    assert "localize: where the variance enters" in p.stderr
    run_dir = only_run_dir(out)
    report = load_report(out)
    (entry,) = report["localization"]
    assert entry["module"]["name"] == "model.layers.0.mlp.down_proj" and entry["operator"]["name"] == "aten::mul"
    assert "modules" not in entry and "operators" not in entry  # kept in localize.json only
    (full,) = json.loads((run_dir / "localize.json").read_text())["localization"]
    assert full["modules"] and full["summary"] == entry["summary"]
    assert "layer 0 mlp.down_proj (aten::mul" in p.stdout  # the console
    md = (run_dir / "summary.md").read_text()
    assert "## Where it breaks" in md and entry["summary"] in md
    html = (run_dir / "report.html").read_text()
    assert "Where it breaks" in html and "aten::mul" in html and "decoder layer" in html  # the per-layer chart
