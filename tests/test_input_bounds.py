"""Issue 23: input that used to fail only after the run folder existed (a traceback), or never end, is refused before
anything is written: one line naming the file, key or value and what to do, exit 2.

- a profile's environment the OS would refuse (a name with '=' or NUL, an empty name, a value with NUL);
- a plan too large to finish (a schedule's count, trials or sizes, perf passes, x max_new_tokens);
- a prompt longer than the model's context (its token length + max_new_tokens against max_position_embeddings),
  read from the model folder's tokenizer.json and config.json before any worker starts; a prompt only the worker can
  measure (its chat template) is refused by the worker, exit 2, with the same message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import plan

from . import fakes
from .helpers import LOADTIME_SUITE, refused, run_cli, tiny_config, tiny_tokenizer, within, write_suite
from .helpers import cli_in_process as harness

SUITE = """
[suite]
name = "s"
version = 1
[model]
ref = "fake-model"
[generation]
max_new_tokens = {max_new}
[prompts]
items = [{items}]
[[schedules]]
kind = "solo"
{schedules}
{perf}
[profiles.default]
{profile}
"""
ITEMS = '{id = "a", text = "one two"}, {id = "b", text = "three"}, {id = "c", text = "four five six"}'


def suite(tmp_path: Path, *, items=ITEMS, schedules="", perf="", profile="", max_new=3) -> Path:
    return write_suite(
        tmp_path / "s.toml",
        SUITE.format(items=items, schedules=schedules, perf=perf, profile=profile, max_new=max_new),
    )


@pytest.fixture
def fake(monkeypatch, tmp_path: Path) -> list[str]:
    return fakes.install(monkeypatch, tmp_path / "model")


# ---- 1. profile environments ----------------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize(
    "profile, words",
    [
        ('env = { "BAD=NAME" = "1" }', ["profiles.default.env.BAD=NAME", "'='"]),
        ('env = { "" = "1" }', ["profiles.default.env", "empty"]),
        ('env = { "A\\u0000B" = "1" }', ["profiles.default.env.A\\x00B", "NUL"]),
        ('env = { A = "x\\u0000y" }', ["profiles.default.env.A", "NUL"]),
        ('device_env = { cpu = { "X=Y" = "1" } }', ["profiles.default.device_env.cpu.X=Y", "'='"]),
        ('env = { A = "' + "x" * 140_000 + '" }', ["profiles.default.env.A", "131072"]),
        (
            "env = { " + ", ".join(f'V{i} = "{"x" * 120_000}"' for i in range(20)) + " }",
            ["profiles.default.env:", "MiB"],
        ),
    ],
)
def test_profile_environment_the_os_refuses_is_named_before_the_run(tmp_path: Path, profile: str, words: list[str]):
    """Through the real CLI: exit 2, one line naming the file and key, no traceback and no run folder. (Before: a
    ValueError traceback from subprocess, after the run folder was made.)"""
    tiny_config(tmp_path / "model", 512)  # a model folder that prepares at once, so the old path got to the worker
    f = suite(tmp_path, profile=profile)
    out = tmp_path / "out"
    p = run_cli("run", str(f), "--model", str(tmp_path / "model"), "--out", str(out), timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith("harness: error: ") and str(f) in p.stderr, p.stderr
    for w in words:
        assert w in p.stderr, (w, p.stderr)
    assert not out.exists()


def test_valid_environments_still_run(tmp_path: Path, fake):
    f = suite(tmp_path, profile='env = { HCCL_DETERMINISTIC = "true", "lower.case-name" = "", X = "a=b" }')
    code, out, err = harness("run", f, "--out", tmp_path / "out", "--baselines", tmp_path / "bl")
    assert code in (0, 1) and "Traceback" not in err, out + err


# ---- 2. the plan's size ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "schedules, perf, max_new, key",
    [
        ('[[schedules]]\nkind = "permutation"\ncount = 1000000000', "", 3, "schedules[1].count"),
        ('[[schedules]]\nkind = "repeat"\ncount = 9223372036854775807', "", 3, "schedules[1].count"),
        ('[[schedules]]\nkind = "needle"\ntrials = 1000000000', "", 3, "schedules[1].trials"),
        ("", "[perf]\nrepeats = 1000000000", 3, "perf.repeats"),
        ("", "[perf]\nwarmup = 1000000000", 3, "perf.warmup"),
        (
            '[[schedules]]\nkind = "batch-sizes"\nsizes = [' + ", ".join(map(str, range(1, 1200))) + "]",
            "",
            32768,
            "schedules[1].sizes",
        ),
        ('[[schedules]]\nkind = "permutation"\ncount = 2000', "", 32768, "schedules[1].count"),
    ],
)
def test_a_plan_too_large_to_finish_is_refused_before_the_run(
    tmp_path: Path, fake, schedules: str, perf: str, max_new: int, key: str
):
    """(Before: accepted, and the run sat silent, expanding a billion permutations.)"""
    f = suite(tmp_path, schedules=schedules, perf=perf, max_new=max_new)
    with within(60):
        code, _, err = harness("run", f, "--out", tmp_path / "out")
    refused(code, err, f"{f}: {key}", f"{plan.MAX_SEQUENCES:,} sequences", f"{plan.MAX_TOKENS:,}")
    assert not fake and not (tmp_path / "out").exists()


def test_a_large_plan_within_the_bound_is_accepted(tmp_path: Path, fake):
    f = suite(tmp_path, schedules='[[schedules]]\nkind = "permutation"\ncount = 40', perf="[perf]\nrepeats = 3")
    code, out, err = harness("run", f, "--out", tmp_path / "out", "--baselines", tmp_path / "bl")
    assert code in (0, 1), out + err


@pytest.mark.parametrize("key", ["repeats", "size_repeats"])
def test_a_load_time_sweep_too_long_to_finish_is_refused_before_the_run(tmp_path: Path, key: str):
    """(Before: accepted, and a billion repeats were planned after the run folder existed.)"""
    f = write_suite(tmp_path / "lt.toml", LOADTIME_SUITE.replace("repeats = 1\n", f"{key} = 1000000000\n"))
    with within(60):
        code, _, err = harness("run", f, "--out", tmp_path / "out")
    refused(code, err, f"{f}: loadtime.{key}", "up to 1000")
    assert not (tmp_path / "out").exists()


# ---- 3. prompts against the model's context ------------------------------------------------------------------------

LONG = '{id = "long", text = "' + "word " * 40 + '"}'


def test_a_prompt_longer_than_the_context_is_refused_before_the_run(tmp_path: Path, fake):
    """In-process, with the fake model's folder given a real tokenizer.json and config.json."""
    tiny_tokenizer(tmp_path / "model")
    tiny_config(tmp_path / "model", 32)
    f = suite(tmp_path, items=ITEMS + ", " + LONG, max_new=4)
    code, _, err = harness("run", f, "--out", tmp_path / "out")
    refused(code, err, f"{f}: prompts", "'long'", "40 tokens", "max_new_tokens 4", "context of 32 tokens")
    assert "max_position_embeddings" in err and "config.json" in err
    assert not (tmp_path / "out").exists()


def test_prompts_that_fit_run(tmp_path: Path, fake):
    tiny_tokenizer(tmp_path / "model")
    tiny_config(tmp_path / "model", 44)
    f = suite(tmp_path, items=ITEMS + ", " + LONG, max_new=4)  # 40 + 4 = 44: exactly the context
    code, out, err = harness("run", f, "--out", tmp_path / "out", "--baselines", tmp_path / "bl")
    assert code in (0, 1), out + err


def test_context_is_scaled_by_rope_scaling_and_found_in_text_config(tmp_path: Path):
    tiny_config(tmp_path / "a", 16, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    assert plan.model_context(tmp_path / "a")[0] == 64
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 100}}))
    assert plan.model_context(tmp_path / "b")[0] == 100
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{not json")
    assert plan.model_context(tmp_path / "c") is None
    assert plan.model_context(tmp_path / "missing") is None


@pytest.mark.process
def test_a_prompt_longer_than_the_context_through_the_real_cli(tmp_path: Path):
    """The real CLI in a real process; the model folder has no weights: nothing loads before the refusal."""
    tiny_tokenizer(tmp_path / "model")
    tiny_config(tmp_path / "model", 32)
    f = suite(tmp_path, items=ITEMS + ", " + LONG, max_new=4)
    out = tmp_path / "out"
    p = run_cli("run", str(f), "--model", str(tmp_path / "model"), "--out", str(out), timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "'long'" in p.stderr and "context of 32 tokens" in p.stderr, p.stderr
    assert not out.exists()


CHAT_TEMPLATE = "{% for m in messages %}" + "sys " * 20 + "{{ m['content'] }}{% endfor %}"


def tiny_llama(folder: Path, context: int) -> None:
    """A one-layer random Llama with the tiny tokenizer and a chat template that adds 20 tokens."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny_tokenizer(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=11,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=context,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "</s>",
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )


@pytest.mark.process
def test_the_worker_refuses_a_prompt_its_chat_template_makes_too_long(tmp_path: Path):
    """The parent counts the text (10 tokens + 4 <= 32); the worker renders the chat template (+20 tokens: 34 > 32)
    and refuses the job before its first batch: exit 2, the same one line, no traceback, no records."""
    tiny_llama(tmp_path / "model", 32)
    items = '{id = "chatty", chat = true, text = "' + "word " * 10 + '"}'
    f = suite(tmp_path, items=items, max_new=4)
    out = tmp_path / "out"
    p = run_cli("run", str(f), "--model", str(tmp_path / "model"), "--out", str(out), timeout=600)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    said = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("s:default:")]  # the progress bar aside
    assert "Traceback" not in p.stderr and len(said) == 1 and said[0].startswith("harness: error: "), p.stderr
    assert "'chatty'" in p.stderr and "30 tokens" in p.stderr and "context of 32 tokens" in p.stderr, p.stderr
    assert not any(out.rglob("*.jsonl")) or all(r.stat().st_size == 0 for r in out.rglob("*.jsonl"))
