"""report.html: self-contained, the summary's content, one map cell per compared sequence, continuations of every
close or diverged one, charts, and the trend from the history."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from harness import history, html
from harness.headline import from_run

from . import synthetic_run

pytest.importorskip("jinja2")
pytest.importorskip("markdown_it")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return synthetic_run.build(tmp_path_factory.mktemp("out"), sequences=150, prompts=30, steps=24)


def page(run, root: Path | None = None, heads=()) -> str:
    assert html.write(run, run.run_dir, root, list(heads)) == []
    return (run.run_dir / "report.html").read_text(encoding="utf-8")


def test_self_contained(run):
    text = page(run)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)  # nothing fetched over the network
    assert "@import" not in text and "url(http" not in text and "<link" not in text
    assert text.count("<svg") >= 2  # latency distributions and load time, inline


def test_one_cell_per_compared_sequence_and_details_for_each_divergence(run):
    text = page(run)
    v = next(v for v in run.verdicts if v.property == "batch-invariance")
    assert len(re.findall(r'<td class="cell ', text)) == v.sequences == 120
    data = json.loads(re.search(r'<script type="application/json" id="cells">(.*?)</script>', text, re.S).group(1))
    diverging = [c for c in v.comparisons if c.level in ("close", "diverged")]
    assert len(data) == len(diverging) and len(re.findall(r"data-d=", text)) == len(diverging)
    d = next(iter(data.values()))
    c = next(c for c in diverging if c.prompt_id == d["prompt"] and c.first_token_step == d["step"])
    assert d["ref"] and d["other"] and d["ref"][0] != d["other"][0]  # the two continuations, from the divergence on
    assert d["margin"] == pytest.approx(c.ref_margin, abs=1e-4) and len(d["ref_topk"]) == 5
    assert any(t["chosen"] for t in d["ref_topk"])


def test_the_summary_tables_are_the_markdown_ones(run):
    text = page(run)
    md = (run.run_dir / "summary.md").read_text()
    header = next(ln for ln in md.splitlines() if ln.startswith("| property"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert all(f"<th>{c}</th>" in text for c in cells if c)
    assert "<details><summary>batch-invariance: " in text  # the folded list of sequences that are not bitwise


def test_model_output_is_text_not_markup(tmp_path: Path):
    res = synthetic_run.build(tmp_path, sequences=40, prompts=10, steps=12)
    path = Path(res.jobs[0].records)
    path.write_text(path.read_text().replace('" the"', '"<script>alert(1)</script>"'))
    text = page(dataclasses.replace(res, records={}))  # read from disk, as a result built elsewhere is
    assert "<script>alert(1)" not in text and "alert(1)" in text


def test_trend_charts_from_the_history(run, tmp_path: Path):
    heads = from_run(run)
    assert heads and {"batch-invariance.share_tokens", "solo.tpot.p50", "load.import", "tok_s"} <= set(heads[0].metrics)
    for i in range(3):
        history.append(tmp_path, heads, run_id=f"r{i}", exit_code=0, when=1_800_000_000.0 + i)
    text = page(run, tmp_path, heads)
    assert 'id="trend"' in text and "(3 runs)" in text
    assert text.count("<svg") >= 3


def test_a_load_time_run_gets_its_page_with_the_plot_inline(tmp_path: Path, monkeypatch):
    from . import fakes
    from .helpers import LOADTIME_SUITE, write_suite
    from .helpers import cli_in_process as harness

    fakes.install(monkeypatch, tmp_path / "model")
    code, out, err = harness("run", write_suite(tmp_path / "lt.toml", LOADTIME_SUITE), "--out", tmp_path / "out")
    assert code == 0, out + err
    run_dir = next(d for d in (tmp_path / "out").iterdir() if d.name != "history")
    text = (run_dir / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in text and "loadtime.png" not in text.split('<h2 id="summary">')[1]
    assert "Per setting" in text  # the summary's tables


def _details(text: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="cells">(.*?)</script>', text, re.S).group(1))


def test_topk_alternatives_no_sequence_generated_are_named_by_the_models_tokenizer(tmp_path: Path):
    tokenizers = pytest.importorskip("tokenizers")
    words = synthetic_run.WORDS
    vocab = {w: i for i, w in enumerate(words)} | {f"alt{i}": i for i in range(len(words), 43)}
    model = tmp_path / "model"
    model.mkdir()
    tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="the")).save(str(model / "tokenizer.json"))
    res = synthetic_run.build(tmp_path / "out", sequences=40, prompts=10, steps=12)
    shown = lambda r: {t["token"] for d in _details(page(r)).values() for t in d["ref_topk"] + d["other_topk"]}  # noqa: E731
    assert "#40" in shown(res)  # ids 40-42 are only ever alternatives: without a tokenizer, just their ids
    named = shown(dataclasses.replace(res, model_dir=str(model)))
    assert {"alt40", "alt41", "alt42"} <= named and not any(t.startswith("#") for t in named)
