"""What a record's ids are (Record.ids): the model's ids where the engine gives them (hf, vLLM in process), the token
text where it gives only text (a server), never a hash in an id field; comparisons and report.html for every one of
them, and records and baselines written before the field read as they were written (hashes of the token text)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from harness import baselines, devicekey, html
from harness.adapters import endpoint
from harness.analysis import baseline as baseline_analysis
from harness.analysis.determinism import compare, evaluate
from harness.records import CHARS, MODEL_IDS, NO_IDS, TEXT_HASH, Record, read_jsonl, text_hash

from . import fake_vllm, synthetic_run
from .helpers import record

K = 4


def _text(i: int) -> str:
    return {0: " the", 1: " a", 2: " of", 3: " to", 7: "\ufffd", 8: "\ufffd"}.get(i, f" w{i}")


# The reference 0 1 2 3; at step 2 it ranks 2 first, then 5 and 6 close behind.
REF = [(0, [(0, -0.1), (9, -2.0), (10, -2.5)]), (1, [(1, -0.1), (11, -2.0)]), (2, [(2, -0.5), (5, -0.52), (6, -1.0)])]
REF += [(3, [(3, -0.1), (12, -2.0)])]


def _steps(spec, shift=0.0):
    return [(t, [(i, lp + shift) for i, lp in top]) for t, top in spec]


def _vllm(spec, prompt="p", kind="solo", bid="solo/0") -> Record:
    """A record as the vllm adapter writes it, through its generate() on vLLM-shaped output."""
    out = fake_vllm.CompletionOutput(
        token_ids=[t for t, _ in spec],
        logprobs=[fake_vllm.step(t, top, _text) for t, top in spec],
        text="".join(_text(t) for t, _ in spec),
    )
    with fake_vllm.installed():
        (g,) = fake_vllm.adapter([out], top_logprobs=K).generate([{"id": prompt, "text": "hi", "chat": False}])
    return _record(g, prompt, kind, bid)


def _served(spec, prompt="p", kind="solo", bid="solo/0") -> Record:
    """A record as the endpoint adapter writes it from a server's streamed logprobs (text only)."""
    steps = [endpoint.Step(_text(t), dict(top).get(t, -9.0), [(_text(i), lp) for i, lp in top]) for t, top in spec]
    g = endpoint.generated([_text(t) for t, _ in spec], [0.01 * (i + 1) for i in range(len(spec))], steps, "length", {})
    return _record(g, prompt, kind, bid)


def _record(g, prompt, kind, bid) -> Record:
    """The Record a worker makes of the adapter's Generated `g`: every output field is g's."""
    return record(prompt, kind=kind, batch_id=bid, **vars(g))


def _legacy(r: Record) -> Record:
    """The same record as the adapters wrote it before `ids`: 48-bit hashes of the token text in the id fields,
    read back from JSON (no `ids`, no `topk_tokens`)."""
    d = json.loads(r.to_json())
    texts = d.pop("topk_tokens")
    d.pop("ids")
    d.update(tokens=[text_hash(p) for p in r.pieces], topk_ids=[[text_hash(t) for t in top] for top in texts])
    return Record.from_dict(d)


def _same(a, b) -> None:
    """Two comparisons alike in everything a verdict and the report use."""
    assert dataclasses.asdict(a) == dataclasses.asdict(b)


# ---- what the adapters write ---------------------------------------------------------------------------------


def test_vllm_in_process_records_the_ids_its_logprobs_are_keyed_by_and_their_text():
    # step 1: the chosen token (4) is outside the top 4 and listed with its own rank, as vLLM does
    spec = [(0, [(0, -0.1), (9, -2.0)]), (4, [(11, -0.2), (12, -0.3), (13, -0.4), (14, -0.5), (15, -0.6)])]
    r = _vllm(spec)  # the chosen 4 comes with its own rank (9), below the five
    assert r.ids == MODEL_IDS and r.level == "logprobs"
    assert r.tokens == [0, 4] and r.pieces == [" the", " w4"]
    assert r.topk_ids == [[0, 9], [11, 12, 13, 14]]  # by rank, k of them; the chosen 4 is not among them
    assert r.topk_tokens == [[" the", " w9"], [" w11", " w12", " w13", " w14"]]
    assert r.topk_logprobs == [[-0.1, -2.0], [-0.2, -0.3, -0.4, -0.5]]


def test_a_servers_records_hold_its_text_and_no_ids():
    r = _served(REF)
    assert r.ids == NO_IDS and r.level == "logprobs" and r.tokens == [] and r.topk_ids == []
    assert r.pieces == [" the", " a", " of", " to"] and r.topk_tokens[2] == [" of", " w5", " w6"]
    assert r.token_keys == r.pieces


def test_in_process_and_served_fingerprints_stay_alike_and_as_before():
    """The fingerprint hashes text and logprobs, as before ids were kept: vLLM in process and served agree."""
    assert _vllm(REF).fingerprints == _served(REF).fingerprints == _legacy(_served(REF)).fingerprints


def test_text_only_output_is_code_points():
    g = endpoint.generated(["Hi", "!"], [0.1, 0.2], [], "stop", {})
    assert g.ids == CHARS and g.tokens == [72, 105, 33] and g.pieces == ["H", "i", "!"]


def test_records_from_before_ids_read_as_they_were_written():
    assert _legacy(_served(REF)).ids == TEXT_HASH
    for level, ids in (("logits", MODEL_IDS), ("text", CHARS)):
        d = json.loads(_vllm(REF).to_json()) | {"level": level}
        del d["ids"], d["topk_tokens"]
        assert Record.from_dict(d).ids == ids


# ---- comparisons ---------------------------------------------------------------------------------------------


def _other(engine, tok: int, alts: tuple[int, ...], kind="needle"):
    spec = REF[:2] + [(tok, [(tok, -0.5), *((a, -0.52 - 0.1 * j) for j, a in enumerate(alts))]), (3, REF[3][1])]
    return engine(spec, kind=kind, bid=f"{kind}/1")


@pytest.mark.parametrize("engine", [_vllm, _served], ids=["vllm", "served"])
@pytest.mark.parametrize(
    "tok, alts, level",
    [(2, (5,), "tokens"), (5, (2, 6), "close"), (5, (6,), "diverged"), (30, (31, 32), "diverged")],
)
def test_close_works_on_ids_and_on_text_and_judges_as_the_hashes_did(engine, tok, alts, level):
    ref, other = engine(REF), _other(engine, tok, alts)
    if level == "tokens":
        other = engine(_steps(REF, shift=-0.001), kind="needle", bid="needle/1")
    c = compare(ref, other)
    assert c.level == level
    _same(c, compare(_legacy(_served(REF)), _legacy(_served_twin(other))))  # the verdict the hashed records got


def _served_twin(r: Record) -> Record:
    """A vLLM record as a server would have returned it (text only), to hash it as records before `ids` did."""
    if r.ids == NO_IDS:
        return r
    return dataclasses.replace(r, ids=NO_IDS, tokens=[], topk_ids=[])


@pytest.mark.parametrize("engine", [_vllm, _served], ids=["vllm", "served"])
def test_a_baseline_written_before_ids_compares_with_todays_records_as_before(engine):
    old_ref = _legacy(_served(REF))
    for tok, alts in ((5, (2, 6)), (5, (6,)), (2, (5,))):
        ours = _other(engine, tok, alts)
        _same(compare(old_ref, ours), compare(old_ref, _legacy(_served_twin(ours))))
    assert compare(old_ref, engine(REF)).level == "bitwise"  # same text, same logprobs: the same fingerprints


def test_vllm_ids_tell_apart_tokens_whose_text_is_the_same():
    """Two byte-fallback tokens both decode to U+FFFD: the ids differ, so the tokens differ (the hashes of the
    text could not see it)."""
    a = _vllm([(0, [(0, -0.1)]), (7, [(7, -0.1), (8, -0.2)])])
    b = _vllm([(0, [(0, -0.1)]), (8, [(8, -0.1), (7, -0.2)])], kind="needle", bid="needle/1")
    c = compare(a, b)
    assert c.first_token_step == 1 and c.level == "close"


def test_unique_outputs_count_a_servers_texts():
    recs = [_served(REF), _served(REF, kind="batch-sizes", bid="b/0"), _other(_served, 5, (2, 6), "batch-sizes")]
    v = evaluate(recs, "default", "batch-invariance", "close")
    assert v.unique_outputs == {"p": 2} and v.status == "pass" and v.close == 1


def test_text_against_logprobs_compares_characters():
    """A text-only baseline and a run whose server now returns logprobs: the text is compared, character by
    character (the served record has no ids to set against the code points)."""
    ours = _served(REF)
    text_ref = dataclasses.replace(
        Record.from_dict(json.loads(_served(REF).to_json())),
        level="text",
        ids=CHARS,
        tokens=[ord(c) for c in ours.text],
        pieces=list(ours.text),
        fingerprints=[],
        topk_ids=[],
        topk_tokens=[],
        topk_logprobs=[],
    )
    assert compare(text_ref, ours).level == "tokens"
    c = compare(text_ref, _other(_served, 5, (2,)))
    assert c.level == "diverged" and c.unit == "character" and c.first_token_step == len(" the a ")
    assert (c.ref_token, c.other_token, c.ref_margin) == ("o", "w", None)


# ---- baselines -----------------------------------------------------------------------------------------------


def _store(tmp_path: Path, refs: list[Record], legacy: bool = False) -> Path:
    info = {"device": "endpoint", "server": "vllm", "target": "cpu", "host": "h"}
    b = baselines.build(
        suite="s",
        profile="default",
        case_hash="c0ffee",
        device_key=devicekey.device_key(info),
        environment={"device": info},
        reason="test",
        references=refs,
        latency={},
        load_s=[],
    )
    path = tmp_path / "default.json"
    baselines.write(path, b)
    if legacy:  # as a harness before `ids` wrote it
        data = json.loads(path.read_text())
        for o in data["outputs"].values():
            del o["ids"], o["topk_tokens"]
        path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("engine", [_vllm, _served], ids=["vllm", "served"])
def test_baselines_of_todays_records_round_trip(tmp_path: Path, engine):
    ref = engine(REF)
    b = baselines.load(_store(tmp_path, [ref]), "c0ffee")
    back = b.reference("p")
    assert (back.ids, back.tokens, back.topk_ids, back.topk_tokens) == (
        ref.ids,
        ref.tokens,
        ref.topk_ids,
        ref.topk_tokens,
    )
    v = baseline_analysis.evaluate([ref, _other(engine, 5, (2, 6), kind="solo")], b.reference, "default", "bitwise")
    assert v.bitwise == 1 and v.sequences == 1


def test_a_baseline_file_from_before_ids_still_reads_and_judges_as_before(tmp_path: Path):
    old = _legacy(_served(REF))
    b = baselines.load(_store(tmp_path, [old], legacy=True), "c0ffee")
    ref = b.reference("p")
    assert ref.ids == TEXT_HASH and ref.tokens == old.tokens and ref.topk_tokens == []
    for engine in (_vllm, _served):
        ours = _other(engine, 5, (2, 6), kind="solo")
        v = baseline_analysis.evaluate([ours], b.reference, "default", "close")
        assert v.status == "pass" and v.close == 1


def test_a_damaged_topk_tokens_is_named(tmp_path: Path):
    path = _store(tmp_path, [_served(REF)])
    data = json.loads(path.read_text())
    data["outputs"]["p"]["topk_tokens"] = [[1, 2]] * 4
    path.write_text(json.dumps(data))
    with pytest.raises(baselines.BaselineError, match="outputs.p.topk_tokens: expected a list of lists of strings"):
        baselines.load(path, "c0ffee")


# ---- report.html ---------------------------------------------------------------------------------------------


def _tokenizer_dir(tmp_path: Path) -> Path:
    """A model folder with a tokenizer.json, as the run's model folder has: what made the page fail on hashes."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w.strip(): i for i in range(43) if (w := synthetic_run.token_text(i))}
    model = tmp_path / "model"
    model.mkdir()
    tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="the")).save(str(model / "tokenizer.json"))
    return model


def _details(text: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="cells">(.*?)</script>', text, re.S).group(1))


@pytest.mark.parametrize("engine", ["vllm", "served"])
def test_report_html_is_written_for_vllm_and_served_runs_and_shows_the_topk(tmp_path: Path, engine):
    pytest.importorskip("jinja2")
    model = _tokenizer_dir(tmp_path)
    res = synthetic_run.build(tmp_path / "out", sequences=40, prompts=10, steps=12, engine=engine, model_dir=str(model))
    assert html.write(res, res.run_dir, None, []) == []  # before: OverflowError decoding hashes as token ids
    assert {r.ids for r in res.records["default"]} == {MODEL_IDS if engine == "vllm" else NO_IDS}
    text = (res.run_dir / "report.html").read_text(encoding="utf-8")
    details = _details(text)
    assert details, "the synthetic run has close and diverged sequences"
    shown = [t for d in details.values() for t in d["ref_topk"] + d["other_topk"]]
    names = {t["token"] for t in shown}
    assert {" alt40", " alt41", " alt42"} <= names and not any(n.startswith("#") for n in names)
    assert all(sum(t["chosen"] for t in d["ref_topk"]) == 1 for d in details.values())  # greedy: the top-1
    d = next(iter(details.values()))
    assert [t["token"] for t in d["ref_topk"]][0] == d["ref"][0]


def test_report_html_of_records_from_before_ids_never_decodes_hashes(tmp_path: Path):
    """Records read again from disk as an older harness wrote them (hashes in the id fields), with the model's
    tokenizer present: the page is written, alternatives named by the text the records hold, else `#hash`."""
    pytest.importorskip("jinja2")
    model = _tokenizer_dir(tmp_path)
    res = synthetic_run.build(
        tmp_path / "out", sequences=40, prompts=10, steps=12, engine="served", model_dir=str(model)
    )
    path = Path(res.jobs[0].records)
    path.write_text("".join(_legacy(r).to_json() + "\n" for r in read_jsonl(path)))
    res = dataclasses.replace(res, records={})  # read from disk, as a result built elsewhere is
    assert html.write(res, res.run_dir, None, []) == []
    names = {t["token"] for d in _details((res.run_dir / "report.html").read_text()).values() for t in d["ref_topk"]}
    assert any(not n.startswith("#") for n in names)  # the generated ones, named by the records' own text


def test_ids_the_tokenizer_does_not_have_stay_ids(tmp_path: Path):
    res = synthetic_run.build(
        tmp_path / "out", sequences=40, prompts=10, steps=12, model_dir=str(_tokenizer_dir(tmp_path))
    )
    huge = {i: 2**40 + i for i in (40, 41, 42)}
    res.records["default"][:] = [
        dataclasses.replace(r, topk_ids=[[huge.get(i, i) for i in ids] for ids in r.topk_ids])
        for r in res.records["default"]
    ]
    assert html.write(res, res.run_dir, None, []) == []
    names = {t["token"] for d in _details((res.run_dir / "report.html").read_text()).values() for t in d["ref_topk"]}
    assert f"#{2**40 + 40}" in names


def test_a_page_that_cannot_be_written_is_a_typed_failure(tmp_path: Path, monkeypatch):
    pytest.importorskip("jinja2")
    res = synthetic_run.build(tmp_path / "out", sequences=20, prompts=5, steps=6)

    def boom(*a, **kw):
        raise OverflowError("number too large to fit in target type")

    monkeypatch.setattr(html, "render", boom)
    (p,) = html.write(res, res.run_dir, None, [])
    assert isinstance(p, html.NotWritten) and p.cause == "error" and "boom" in p.where
    assert str(p).startswith("report.html not written: OverflowError: number too large to fit in target type")
    assert not (res.run_dir / "report.html").exists()
    monkeypatch.setitem(__import__("sys").modules, "markdown_it", None)
    (p,) = html.write(res, res.run_dir, None, [])
    assert p.cause == "missing dependency" and "markdown_it is not installed" in str(p)
