"""report.html: one self-contained page per run (no network: styles, the one small script and every chart inline).

Jinja2 lays out the page (autoescaped: prompts and model output can contain anything), matplotlib draws the charts
as inline SVG (vector, no JavaScript, a few tens of kB each), and markdown-it renders the run's own summary.md, so
the verdict tables are the same content as the Markdown report, not a second rendering of them.

What it shows: the summary's verdicts and tables; a divergence map per profile and property (prompt x
schedule/occurrence, coloured by level, the first divergent step in each cell; a click on a close or diverged cell
shows both continuations side by side from the divergence on, with the reference margin and both top-k); latency
distributions per profile (TTFT and TPOT, against the baseline's samples when there is one); load times; and the
trend of the last runs from the history, with Otava's change points marked.
"""

from __future__ import annotations

import base64
import re
import traceback
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__, atomic, charts, history, trend
from .errors import one_line
from .records import MODEL_IDS, TEXT_HASH, Record, read_jsonl
from .status import NotWrittenCause, run_result

CONTINUATION = 40  # tokens shown per side after a divergence
CONTEXT = 12  # tokens shown before it
LEVEL_COLOURS = {"bitwise": "#2e7d32", "tokens": "#9ccc65", "close": "#ffb300", "diverged": "#d32f2f"}
_DETAILS = re.compile(r"^<details><summary>(.*)</summary>$")


@dataclass(frozen=True)
class NotWritten:
    """report.html was not written: a failure of one of the run's outputs, not a remark. str() is the one line the
    console showed for it before ("report.html not written: ...")."""

    # "missing dependency": jinja2, matplotlib or markdown-it is not installed; "error": drawing or writing it raised
    cause: NotWrittenCause
    message: str  # one line: what is missing, or the exception's type and message
    where: str = ""  # cause "error": the innermost frame that raised it, "path:line in function"

    def __str__(self) -> str:
        return one_line(f"report.html not written: {self.message}" + (f" (at {self.where})" if self.where else ""))


def write(result: Any, run_dir: Path, history_root: Path | None, headlines: list[history.Headline]) -> list[NotWritten]:
    """Write run_dir/report.html. Returns [] when it is written, else one NotWritten saying why; never raises for a
    page that cannot be drawn or written (any Exception), so the run's verdicts and reports stand either way."""
    try:
        import jinja2  # noqa: F401
        import markdown_it  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError as e:
        why = f"{e.name} is not installed (pip install jinja2 matplotlib markdown-it-py)"
        return [NotWritten("missing dependency", why)]
    try:
        text = render(result, run_dir, history_root, headlines)
        atomic.write_text(Path(run_dir) / "report.html", text)
    except Exception as e:  # noqa: BLE001  reported to the caller as a failed output, not raised through the run
        frames = traceback.extract_tb(e.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        return [NotWritten("error", f"{type(e).__name__}: {e}", where)]
    return []


def render(result: Any, run_dir: Path, history_root: Path | None, headlines: list[history.Headline]) -> str:
    import jinja2

    from .report import RunResult

    run_dir = Path(run_dir)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    ctx: dict[str, Any] = {
        "run_id": run_dir.name,
        "harness_version": __version__,
        "summary": summary_blocks(run_dir),
        "maps": [],
        "details": {},
        "figures": [],
        "trends": charts.trends(history_root, headlines) if history_root is not None else [],
        "colours": LEVEL_COLOURS,
        "pvalue": f"{trend.PVALUE:g}",
    }
    if isinstance(result, RunResult):
        s = result.suite
        ctx["title"] = s.name
        ctx["result"] = result.result
        ctx["subtitle"] = f"{s.model.ref} · {s.model.dtype} · {s.model.device}"
        ctx["maps"], ctx["details"] = divergence_maps(result)
        ctx["figures"] = [f for f in (charts.latency_figure(result), charts.load_figure(result)) if f]
    else:  # a load-time run: its own plot, already drawn beside the summary
        ctx["title"] = f"{result.suite.name}: load time"
        ctx["result"] = run_result(result.exit_code)
        ctx["subtitle"] = f"{result.suite.model_ref} · {result.suite.dtype} · {result.suite.device}"
    return env.get_template("report.html.j2").render(**ctx)


# ---- the summary, as the Markdown report has it -----------------------------------------------------------


def summary_blocks(run_dir: Path) -> list[dict[str, str]]:
    """summary.md as HTML, in blocks: its folded sections (the one raw HTML it writes) become real <details>.
    Everything else is rendered with raw HTML off, so model output in a table cell stays text."""
    from markdown_it import MarkdownIt
    from markupsafe import Markup

    try:
        text = (run_dir / "summary.md").read_text(encoding="utf-8")
    except OSError:
        return []
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    # only what we inline below; markdown-it's documented override, per instance (typed there as a method)
    md.validateLink = lambda url: url.startswith("data:image/png;base64,")  # type: ignore[method-assign]
    text = re.sub(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)", lambda m: _inline_png(run_dir, m), text)
    blocks: list[dict[str, str]] = []
    chunk: list[str] = []

    def flush(kind: str = "md") -> None:
        if chunk:
            blocks.append({"kind": kind, "html": Markup(md.render("\n".join(chunk)))})
            chunk.clear()

    for line in text.splitlines():
        m = _DETAILS.match(line)
        if m:
            flush()
            blocks.append({"kind": "open", "summary": m.group(1)})
        elif line == "</details>":
            flush()
            blocks.append({"kind": "close"})
        else:
            chunk.append(line)
    flush()
    return blocks


def _inline_png(run_dir: Path, m: re.Match[str]) -> str:
    try:
        data = base64.b64encode((run_dir / m.group(2)).read_bytes()).decode()
    except OSError:
        return f"({m.group(1)}: {m.group(2)} missing)"
    return f"![{m.group(1)}](data:image/png;base64,{data})"


# ---- the divergence map ------------------------------------------------------------------------------------


def _records(result: Any) -> dict[str, list[Record]]:
    """The run's records: those the pipeline analysed, else (a result built elsewhere) read again from disk."""
    if result.records:
        return {p: [r for r in recs if not r.failed] for p, recs in result.records.items()}
    return {j.profile: [r for r in read_jsonl(Path(j.records)) if not r.warmup and not r.failed] for j in result.jobs}


def _reference(records: list[Record], prop: str) -> dict[str, Record]:
    """The reference per prompt, as analysis.determinism chooses it: the first repeat, else the solo run."""
    refs: dict[str, Record] = {}
    for r in records:
        if (r.kind == "repeat") if prop == "repeatability" else (r.kind == "solo"):
            refs.setdefault(r.prompt_id, r)
    return refs


def _topk(r: Record, step: int, names: dict[str, dict[int, str]]) -> list[dict[str, Any]]:
    """The alternatives at one step: the engine's own text where it gave it (a server; vLLM in process), else the
    ids named by the records and the tokenizer (`#id` where neither names one)."""
    ids = r.topk_ids[step] if step < len(r.topk_ids) else None
    texts = r.topk_tokens[step] if step < len(r.topk_tokens) else None
    lps = r.topk_logprobs[step] if step < len(r.topk_logprobs) else []
    if ids is not None and r.ids in names:
        tok = r.tokens[step] if step < len(r.tokens) else None
        if texts is None or len(texts) != len(ids):
            texts = [names[r.ids].get(i, f"#{i}") for i in ids]
        chosen = [i == tok for i in ids]
    elif texts is not None:
        piece = r.pieces[step] if step < len(r.pieces) else None
        chosen = [t == piece for t in texts]
    else:
        return []
    return [{"token": t, "logprob": round(lp, 4), "chosen": c} for t, c, lp in zip(texts, chosen, lps)]


def _names(result: Any, records: dict[str, list[Record]]) -> dict[str, dict[int, str]]:
    """Text for the ids in the records, per id space that has ids (a record's own pieces name the tokens it
    generated); a server's records carry text, not ids, and need none."""
    names: dict[str, dict[int, str]] = {MODEL_IDS: {}, TEXT_HASH: {}}
    for recs in records.values():
        for r in recs:
            if r.ids in names:
                names[r.ids].update(zip(r.tokens, r.pieces))
    names[MODEL_IDS] = _with_topk_pieces(names[MODEL_IDS], result, records)
    return names


def _with_topk_pieces(pieces: dict[int, str], result: Any, records: dict[str, list[Record]]) -> dict[int, str]:
    """Top-k alternatives that no sequence generated have no piece in the records; the model folder's
    tokenizer.json names them (tokenizers only: no model, no torch). Without one they stay `#id`. Only the model's
    own ids go to it, and only those it has (a record from a server holds text, an older one hashes of it)."""
    missing = {
        i
        for recs in records.values()
        for r in recs
        if r.ids == MODEL_IDS and not r.topk_tokens  # with the engine's text beside them, nothing to decode
        for ids in r.topk_ids
        for i in ids
    } - pieces.keys()
    path = Path(result.model_dir) / "tokenizer.json"
    if not missing or not result.model_dir or not path.is_file():
        return pieces
    try:
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(path))
        vocab = tok.get_vocab_size(with_added_tokens=True)
    except Exception:  # noqa: BLE001  (a name for an alternative is a nicety; the verdicts do not need it)
        return pieces
    named = {}
    for i in sorted(missing):
        if not 0 <= i < vocab:
            continue  # not one of this tokenizer's ids (another model's records): it stays `#id`
        try:
            named[i] = tok.decode([i])
        except Exception:  # noqa: BLE001
            continue
    return {**named, **pieces}


def divergence_maps(result: Any) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """One map per profile and property: rows are prompts, columns each schedule's k-th sequence of that prompt;
    every compared sequence is one cell. Details (continuations, top-k) only for close and diverged cells."""
    records = _records(result)
    names = _names(result, records)
    maps: list[dict[str, Any]] = []
    details: dict[str, dict[str, Any]] = {}
    for v in result.verdicts:
        if not v.comparisons:
            continue
        recs = records.get(v.profile, [])
        by_place = {(r.batch_id, r.prompt_id, r.position): r for r in recs}
        refs = _reference(recs, v.property)
        seen: dict[tuple[str, str], int] = defaultdict(int)
        columns: list[tuple[str, int]] = []
        cells: dict[str, dict[tuple[str, int], dict[str, Any]]] = defaultdict(dict)
        for c in v.comparisons:
            k = seen[(c.prompt_id, c.schedule)]
            seen[(c.prompt_id, c.schedule)] += 1
            col = (c.schedule, k)
            if col not in columns:
                columns.append(col)
            step = c.first_token_step if c.level in ("close", "diverged") else c.first_bit_step
            cell = {
                "level": c.level,
                "step": "" if step is None else step,
                "title": f"{c.batch_id}: batch of {len(c.batch)}, position {c.position}; {c.level}"
                + ("" if step is None else f" from step {step}"),
                "id": "",
            }
            other, ref = by_place.get((c.batch_id, c.prompt_id, c.position)), refs.get(c.prompt_id)
            if c.level in ("close", "diverged") and other is not None and ref is not None and step is not None:
                cid = f"d{len(details)}"
                cell["id"] = cid
                details[cid] = {
                    "profile": v.profile,
                    "property": v.property,
                    "prompt": c.prompt_id,
                    "where": cell["title"],
                    "step": step,
                    "unit": c.unit,
                    "margin": None if c.ref_margin is None else round(c.ref_margin, 4),
                    "k": c.k,
                    "ref_in": c.ref_in_other_topk,
                    "other_in": c.other_in_ref_topk,
                    "context": "".join(ref.pieces[max(0, step - CONTEXT) : step]),
                    "ref": ref.pieces[step : step + CONTINUATION] if c.unit == "step" else [ref.text[step:][:400]],
                    "other": other.pieces[step : step + CONTINUATION]
                    if c.unit == "step"
                    else [other.text[step:][:400]],
                    "ref_topk": _topk(ref, step, names),
                    "other_topk": _topk(other, step, names),
                    "reference": "the first repeat" if v.property == "repeatability" else "the prompt alone (solo)",
                }
            cells[c.prompt_id][col] = cell
        order = list(dict.fromkeys(s for s, _ in columns))  # schedules in the order they ran
        columns.sort(key=lambda col: (order.index(col[0]), col[1]))
        counts = {lvl: sum(1 for c in v.comparisons if c.level == lvl) for lvl in LEVEL_COLOURS}
        maps.append(
            {
                "profile": v.profile,
                "property": v.property,
                "where": [
                    where_panel(e)
                    for e in getattr(result, "localization", [])
                    if (e["case"]["profile"], e["case"]["property"]) == (v.profile, v.property)
                ],
                "status": v.status,
                "columns": [f"{s} {k + 1}" if sum(1 for x, _ in columns if x == s) > 1 else s for s, k in columns],
                "rows": [{"prompt": p, "cells": [cells[p].get(col) for col in columns]} for p in sorted(cells)],
                "counts": counts,
                "n": len(v.comparisons),
            }
        )
    return maps, details


def where_panel(entry: dict[str, Any]) -> dict[str, Any]:
    """Under a divergence map: where its worst case's variance enters (harness localize), with the first operator
    and the per-layer growth of the difference."""
    op = entry.get("operator") or {}
    shapes = " · ".join(
        f"{side} {' x '.join(str(list(s)) for s in op.get(k) or [])}"
        for side, k in (("reference", "ref_inputs"), ("compared", "other_inputs"))
        if op.get(k)
    )
    return {
        "summary": entry["summary"],
        "operator": op.get("name", ""),
        "shapes": shapes,
        "svg": charts.layer_figure(entry) if entry.get("layers") else "",
    }
