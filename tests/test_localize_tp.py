"""`harness localize` for tensor parallel: a TP N job's sequence against its TP 1 twin, compared on rank 0 only where
the tensors are whole (after a row-parallel layer's all-reduce, norms, decoder layers, the gathered logits).

Case selection, the sharded marking and the summary line on hand-made input (fast); then a real TP 1 + TP 2 run of the
tiny random Llama under torchrun, localised by a real worker group and a TP 1 worker.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.localize import cases, summary
from harness.localize.compare import Captured, Ctx, compare_pairs

from .helpers import job, only_run_dir, record, refused, run_cli, write_suite

# ---- case selection, on hand-made records ------------------------------------------------------------------------


def _tp_runs() -> list[cases.JobRun]:
    """A TP 1 job and a TP 2 job of the same batches: prompt b's twin differs from step 0, a's from step 2."""
    one = [
        record("a", kind="solo", batch_id="solo/0", tokens=(1, 2, 3)),
        record("b", kind="solo", batch_id="solo/1", tokens=(4, 5, 6)),
        record("a", kind="batch-sizes", batch_id="bs/0", batch=["a", "b"], position=0, tokens=(1, 2, 3)),
    ]
    two = [
        record("a", kind="solo", batch_id="solo/0", tokens=(1, 2, 3), fingerprints=["fp1", "fp2", "x"]),
        record("b", kind="solo", batch_id="solo/1", tokens=(4, 5, 6), fingerprints=["x", "x", "x"]),
        record("a", kind="batch-sizes", batch_id="bs/0", batch=["a", "b"], position=0, tokens=(1, 2, 3)),
    ]
    return [
        cases.JobRun(job("default-tp1", 1), Path("jobs/default-tp1.json"), one),
        cases.JobRun(job("default-tp2", 2), Path("jobs/default-tp2.json"), two),
    ]


def _select(runs: list[cases.JobRun], **kw) -> list[cases.Case]:
    return cases.select(runs, **{"profile": None, "prompt": None, "batch": None, "max_cases": 3, **kw})


def test_tp_invariance_cases_pair_twins_of_the_tp1_job():
    (case,) = _select(_tp_runs())  # batch invariance is bitwise in the TP 1 job: only the TP case
    assert (case.property, case.prompt_id, case.first_bit_step) == ("tp-invariance", "b", 0)
    assert (case.job, case.reference_job, case.tp) == ("default-tp2", "default-tp1", 2)
    assert case.reference.batch_id == case.compared.batch_id == "solo/1"
    assert case.compared.fingerprints == ("x", "x", "x") and case.reference.fingerprints == ("fp4", "fp5", "fp6")
    assert cases.Case.from_dict(json.loads(json.dumps(case.to_dict()))) == case
    assert case.shown()["tp"] == 2 and case.shown()["reference_job"] == "default-tp1"
    (named,) = _select(_tp_runs(), prompt="a", batch="solo/0")
    assert named.first_bit_step == 2 and named.property == "tp-invariance"
    # the end of a run asks only for what failed: another property of the profile finds nothing here
    assert _select(_tp_runs(), wanted=frozenset({("default", "batch-invariance")})) == []
    assert len(_select(_tp_runs(), wanted=frozenset({("default", "tp-invariance")}))) == 1


def test_a_profile_without_a_tp1_job_is_refused_in_one_line():
    tp2 = _tp_runs()[1:]
    with pytest.raises(HarnessError) as e:
        _select(tp2, profile="default")
    assert e.value.code == 2 and "only as a tensor parallel group here (TP 2)" in str(e.value)
    assert _select(tp2) == []  # no reference: nothing to compare, not an error
    with pytest.raises(HarnessError) as e:
        _select(_tp_runs(), prompt="a", batch="bs/0")
    assert e.value.code == 2 and "bitwise identical" in str(e.value)


# ---- sharded outputs and the summary line ------------------------------------------------------------------------


def test_sharded_outputs_are_not_the_first_difference():
    from harness.localize.compare import first_difference
    from harness.localize.tp import compare_pass, operator_note, shard_text, styles

    ctx = Ctx(1, 0, 2, 2, 0)
    whole = torch.arange(16.0).reshape(1, 2, 8)
    q = torch.arange(32.0).reshape(1, 2, 16)
    q_rank0 = q[..., :8].clone()
    q_rank0[0, 0, 0] += 1  # rank 0's share differs: a hint, never the first difference
    later = whole.clone()
    later[0, 1, 1] += 0.5

    def cap(t):
        return Captured(t[0], "row", tuple(t.shape))

    ours = [("m.q_proj", cap(q)), ("m.o_proj", cap(whole)), ("m", cap(whole))]
    theirs = [("m.q_proj", cap(q_rank0)), ("m.o_proj", cap(later)), ("m", cap(later))]
    st = {"m.q_proj": "colwise", "m.o_proj": "rowwise"}
    entries = compare_pass(ours, theirs, ctx, st, head_dim=4)
    assert entries[0]["why"] == "sharded" and entries[0]["equal"] is None and entries[0]["comparable"] is False
    assert (
        entries[0]["shard"] == "sharded: rank 0 holds heads 0..1 of 4" and entries[0]["rank0_slice"]["equal"] is False
    )
    assert first_difference(entries)["name"] == "m.o_proj" and entries[1]["tp_style"] == "rowwise"
    assert shard_text("model.layers.0.mlp.up_proj", 32, 64, 4) == "sharded: rank 0 holds features 0..31 of 64"
    assert operator_note("m.o_proj", st, 2)["why"] == "sharded"
    assert operator_note("m", st, 2)["why"] == "sharded"  # it holds parallel layers
    assert operator_note("norm", st, 2)["why"] == "not captured"
    # the plan's patterns name the modules
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])
    model._tp_plan = {"layers.*": "rowwise"}
    assert styles(model) == {"layers.0": "rowwise", "layers.1": "rowwise"}
    # and a pass where only a sharded output differs has no first difference
    assert first_difference(compare_pass(ours[:1], theirs[:1], ctx, st, 4)) is None
    assert compare_pairs(ours[:1], ctx, theirs[:1], ctx)[0]["why"] == "not aligned"  # what the marking replaces


def _entry(at: dict) -> dict:
    return {
        "case": {
            "profile": "default",
            "property": "tp-invariance",
            "prompt_id": "a",
            "first_bit_step": 0,
            "first_token_step": None,
            "reference": {"batch_id": "solo/0", "batch": ["a"], "position": 0},
            "compared": {"batch_id": "solo/0", "batch": ["a"], "position": 0},
            "tp": 3,
        },
        "status": "localized",
        "tp": 3,
        "step": 0,
        "module": {"name": "model.layers.0.self_attn.o_proj", "index": 6},
        "enters": at,
        "operator": {"why": "sharded"},
        "modules": [
            {
                "name": "model.layers.0.self_attn.k_proj",
                "index": 4,
                "why": "sharded",
                "shard": "sharded: rank 0 holds KV heads 0..0 of 3",
                "rank0_slice": {"equal": False, "ulps": 1.0},
            }
        ],
        "not_comparable": 12,
        "layers_path": "model.layers",
        "layers": [{"layer": 29, "index": 400, "max_abs": 1.5e-5}],
        "logits": {"step": 0, "argmax_flips": False},
        "replay_matches_records": {"reference": True, "compared": True},
    }


def test_summary_line_says_where_a_tp_difference_enters():
    line = summary.line(_entry({"at": "all-reduce"}))
    assert line.startswith("default tp-invariance: prompt 'a' in solo/0 (row 0 of 1), TP 3 against TP 1: ")
    assert "first shows at step 0 in layer 0 self_attn.o_proj, the first whole output to differ" in line
    assert "is bit-identical to TP 1's: the difference enters in the row-parallel product, 3 partial matmuls" in line
    assert "operators not compared: they run on rank 0's shard" in line
    assert line.endswith("grows to 1.5e-05 by layer 29, flips no token")
    line = summary.line(
        _entry({"at": "sharded code", "ranks_differing": [0, 2], "first_sharded": "model.layers.0.self_attn.k_proj"})
    )
    assert "already differs (the shares of ranks 0 and 2): the difference entered in the sharded code" in line
    assert "first seen in rank 0's share at layer 0 self_attn.k_proj (rank 0 holds KV heads 0..0 of 3, 1 ulp)" in line
    clean = summary.line({**_entry({}), "status": "no module differs"})
    assert clean.endswith(
        "no whole module output differs through step 0, where the records' logits bits differ; "
        "12 sharded outputs on rank 0 not compared"
    )


# ---- a real TP 1 + TP 2 run of the tiny model --------------------------------------------------------------------

# Prompts of different lengths: the batch pads one row, so the TP case is lined up across padding too.
SUITE = """
[suite]
name = "loc-tp"
version = 1
[model]
ref = "{model}"
dtype = "float32"
[generation]
max_new_tokens = 3
[prompts]
items = [{{id = "a", text = "one two three", chat = false}}, {{id = "b", text = "the cat sat on the mat", chat = false}}]
[parallel]
tp = [1, 2]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "batch-sizes"
sizes = [2]
[profiles.default]
expect = {{ cpu = "report" }}
"""

COLUMN_PARALLEL = re.compile(r"\.(q_proj|k_proj|v_proj|gate_proj|up_proj|act_fn)$")


@pytest.fixture(scope="module")
def tp_run(tiny_model: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("localize-tp")
    suite = write_suite(tmp / "tp.toml", SUITE.format(model=tiny_model))
    p = run_cli("run", str(suite), "--out", str(tmp / "r"))
    assert p.returncode == 0, p.stderr[-3000:]
    return only_run_dir(tmp / "r")


@pytest.mark.process
def test_tp2_against_tp1_is_localised_to_a_whole_module(tp_run: Path):
    report = json.loads((tp_run / "report.json").read_text())
    v = next(v for v in report["verdicts"] if v["property"] == "tp-invariance")
    assert v["bitwise"] < v["sequences"]  # TP 2 moves the bits of the tiny model: something to localise
    p = run_cli("localize", str(tp_run), "--prompt", "a", "--batch", "batch-sizes/0")
    assert p.returncode == 0, p.stderr[-3000:]
    (entry,) = (e for e in json.loads((tp_run / "localize.json").read_text())["localization"] if "tp" in e["case"])
    assert entry["case"]["property"] == "tp-invariance" and entry["case"]["reference_job"] == "default-tp1"
    assert entry["status"] == "localized" and entry["tp"] == 2
    module = entry["module"]
    assert re.fullmatch(
        r"model\.layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj|self_attn|mlp|\w+_layernorm)|"
        r"model\.layers\.\d+|model\.norm|lm_head",
        module["name"],
    ), module["name"]
    assert not COLUMN_PARALLEL.search(module["name"]) and module["ref_shape"] == module["other_shape"]
    # a row-parallel output is whole on rank 0 (after its all-reduce), not a partial sum: TP 1's to rounding
    whole = [m for m in entry["modules"] if m.get("tp_style") == "rowwise"]
    assert whole and all(m["comparable"] and m["max_rel"] < 1e-5 for m in whole)
    sharded = [m for m in entry["modules"] if m.get("why") == "sharded"]
    assert sharded and all(COLUMN_PARALLEL.search(m["name"]) for m in sharded)
    assert all(m["equal"] is None and m["shard"].startswith("sharded: rank 0 holds ") for m in sharded)
    assert entry["not_comparable"] == len(sharded)
    before = [m for m in entry["modules"] if m["index"] < module["index"] and m.get("why") != "sharded"]
    assert before and all(m["equal"] for m in before)  # the first whole difference
    assert entry["operator"]["why"] in ("sharded", "not captured") and entry["operators"] == []
    assert entry["enters"]["at"] in ("all-reduce", "sharded code", "module", "before")
    assert entry["replay_matches_records"] == {"reference": True, "compared": True}
    assert entry["group"]["tp"] == 2 and entry["group"]["load_s"] > 0
    assert "tp-invariance: prompt 'a' in batch-sizes/0 (row 0 of 2), TP 2 against TP 1: " in p.stdout
    assert "the first whole output to differ" in p.stdout
    assert not list((tp_run / "localize").glob("*.pt"))  # the group's captures are removed once compared
    assert (tp_run / "localize" / "default-tp2.ranks").is_dir()


@pytest.mark.process
def test_tp_bad_input_is_one_line(tp_run: Path):
    def cli(*args: str) -> tuple[int, str]:
        p = run_cli("localize", str(tp_run), *args)
        return p.returncode, p.stderr

    refused(*cli("--prompt", "zz"), "prompt 'zz' is not in this run")
    refused(*cli("--batch", "batch-sizes/9"), "batch 'batch-sizes/9' is not in this run")
