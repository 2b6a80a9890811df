from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness import suite as S
from harness import suite_parse as P

from .helpers import ROOT, run_cli, write_suite

GOOD = """
[suite]
name = "t"
version = 1
[prompts]
items = [{id = "a", text = "x"}, {id = "b", text = "y"}, {id = "c", text = "z"}]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "needle"
trials = 2
[profiles.default]
expect = { cpu = "vary" }
"""


def parse(text: str) -> S.Suite:
    return P.parse(S.tomllib.loads(text), "t.toml")


def test_good_suite_defaults():
    s = parse(GOOD)
    assert [p.id for p in s.prompts] == ["a", "b", "c"]
    assert s.generation.max_new_tokens == 64 and s.model.ref == "smollm2-135m"
    assert s.profile("default").expectation("cpu", "batch-invariance") == "vary"
    assert s.profile("default").expectation("npu", "batch-invariance") == "report"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda t: t.replace("version = 1", 'version = 1\ncolour = "red"'), "t.toml: suite.colour: unknown key"),
        (
            lambda t: t.replace("version = 1", 'version = "1"'),
            "t.toml: suite.version: expected the suite format version",
        ),
        (lambda t: t.replace("version = 1", "version = 7"), "t.toml: suite.version: unsupported suite format 7"),
        (
            lambda t: t.replace(
                'items = [{id = "a", text = "x"}, {id = "b", text = "y"}, {id = "c", text = "z"}]', "items = []"
            ),
            "t.toml: prompts.items: no prompts",
        ),
        (lambda t: t.replace('{id = "b", text = "y"}', '{id = "a", text = "y"}'), "prompt id 'a' appears twice"),
        (lambda t: t.replace('{id = "b", text = "y"}', '{id = "b", txt = "y"}'), "prompts.items[1].txt: unknown key"),
        (
            lambda t: t.replace("trials = 2", "trials = 0"),
            "t.toml: schedules[1].trials: expected a positive integer, got 0",
        ),
        (
            lambda t: t.replace("trials = 2", "trials = true"),
            "schedules[1].trials: expected a positive integer, got True",
        ),
        (lambda t: t.replace("trials = 2", "min_size = 9"), "schedules[1].min_size: expected an integer in [2, 3]"),
        (lambda t: t.replace("trials = 2", 'prompt = "zz"'), "schedules[1].prompt: expected the id of a prompt"),
        (
            lambda t: t.replace('kind = "needle"', 'kind = "needel"'),
            "unknown schedule 'needel'; did you mean 'needle'?",
        ),
        (
            lambda t: t.replace('kind = "needle"\ntrials = 2', 'kind = "batch-sizes"\nsizes = []'),
            "schedules[1].sizes: expected a non-empty list of positive integers",
        ),
        (lambda t: t.replace('[[schedules]]\nkind = "solo"\n', ""), 'batch-invariance schedules need a kind = "solo"'),
        (
            lambda t: t.replace('expect = { cpu = "vary" }', 'expect = { cpu = "varies" }'),
            "profiles.default.expect.cpu: expected one of bitwise",
        ),
        (
            lambda t: t.replace('expect = { cpu = "vary" }', 'expect = { tpu = "vary" }'),
            "profiles.default.expect.tpu: unknown device",
        ),
        (
            lambda t: t.replace('expect = { cpu = "vary" }', 'expect = { cpu = { batch-invariant = "vary" } }'),
            "unknown property; did you mean 'batch-invariance'?",
        ),
        (
            lambda t: t.replace('expect = { cpu = "vary" }', "env = { HCCL_DETERMINISTIC = true }"),
            "profiles.default.env.HCCL_DETERMINISTIC: expected a string",
        ),
        (lambda t: t.replace('[profiles.default]\nexpect = { cpu = "vary" }', ""), "profiles: missing table"),
        (
            lambda t: t + '\n[model]\ndtype = "fp8"\n',
            "model.dtype: expected one of float32, bfloat16, float16, got 'fp8'",
        ),
        (lambda t: t + "\n[generation]\ngreedy = false\n", "generation.greedy: expected true"),
    ],
)
def test_bad_suites_name_file_and_key(edit, expected):
    with pytest.raises(S.SuiteError) as e:
        parse(edit(GOOD))
    msg = str(e.value)
    assert expected in msg
    assert "\n" not in msg


def test_unknown_profile_did_you_mean():
    with pytest.raises(S.SuiteError, match="no profile 'defualt'; did you mean 'default'"):
        parse(GOOD).with_overrides(profiles=["defualt"])


def test_case_hash_covers_outputs_not_profiles():
    s = parse(GOOD)
    assert s.case_hash == parse(GOOD).case_hash
    assert parse(GOOD.replace('text = "x"', 'text = "x2"')).case_hash != s.case_hash
    assert parse(GOOD.replace("trials = 2", "trials = 3")).case_hash != s.case_hash
    assert s.with_overrides(model="/m").case_hash != s.case_hash
    assert s.with_overrides(device="npu").case_hash == s.case_hash  # device is in the baseline's device key
    extra = parse(GOOD + '\n[profiles.det]\nenv = { HCCL_DETERMINISTIC = "true" }\n')
    assert extra.case_hash == s.case_hash
    assert extra.profile_hash(extra.profile("det")) != extra.profile_hash(extra.profile("default"))


SERVED = GOOD.replace(
    "[prompts]",
    """[server]
command = "transformers serve {model} --port {port}"
[endpoint]
api = "chat"
[prompts]""",
)


def test_served_suite_defaults_and_overrides():
    s = parse(SERVED)
    assert s.model.adapter == "endpoint" and s.server.port == 0 and s.server.host == "127.0.0.1"
    assert s.endpoint.base_url == "http://{host}:{port}" and s.endpoint.verify and s.endpoint.max_body_bytes == 4 << 20
    assert s.case_hash != parse(SERVED.replace('api = "chat"', 'api = "completions"')).case_hash
    running = s.with_overrides(endpoint="https://10.0.0.5:1025/")
    assert running.server is None and running.endpoint.base_url == "https://10.0.0.5:1025"
    with pytest.raises(S.SuiteError, match="--endpoint: expected an http:// or https:// URL"):
        s.with_overrides(endpoint="10.0.0.5:1025")
    with pytest.raises(S.SuiteError, match="has no \\[endpoint\\] or \\[server\\] section"):
        parse(GOOD).with_overrides(endpoint="http://x:1")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda t: t.replace("--port {port}", "--port {port} --gpu {gpu}"),
            "server.command: unknown placeholder {gpu}",
        ),
        (
            lambda t: t.replace("--port {port}", "--port 8000"),
            "server.command: has no {port} placeholder, so set server.port",
        ),
        (lambda t: t.replace('api = "chat"', 'api = "responses"'), "endpoint.api: expected one of completions, chat"),
        (lambda t: t.replace('api = "chat"', 'client_cert = "t.toml"'), "endpoint.client_cert: file"),
        (
            lambda t: t.replace('api = "chat"', 'api_key_env = "sk-abc123!"'),
            "endpoint.api_key_env: expected the NAME of an environment variable",
        ),
        (lambda t: t.replace('api = "chat"', 'base_url = "ftp://x"'), "base_url: expected an http:// or https:// URL"),
        (
            lambda t: t.replace('[server]\ncommand = "transformers serve {model} --port {port}"\n', ""),
            "endpoint.base_url: missing; expected the server's URL",
        ),
        (
            lambda t: t.replace('[server]\ncommand = "transformers serve {model} --port {port}"\n', "").replace(
                'api = "chat"', 'base_url = "http://{host}:{port}"'
            ),
            "endpoint.base_url: uses {host}/{port}, which only a [server]",
        ),
        (
            lambda t: t.replace('expect = { cpu = "vary" }', "torch_deterministic = true"),
            "profiles.default.torch_deterministic: acts on an in-process model only",
        ),
        (lambda t: t + '\n[model]\nadapter = "hf"\n', "model.adapter: 'hf' runs an in-process model"),
    ],
)
def test_bad_served_suites(edit, expected):
    with pytest.raises(S.SuiteError) as e:
        parse(edit(SERVED))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_attachments_resolve_hash_by_content_and_need_a_chat_server(tmp_path: Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cat.png").write_bytes(b"\x89PNG fake")
    text = SERVED.replace('{id = "a", text = "x"}', '{id = "a", text = "x", attachments = ["a/cat.png"]}')
    s = P.parse(S.tomllib.loads(text), "t.toml", tmp_path)
    att = s.prompts[0].attachments[0]
    assert att.mime == "image/png" and Path(att.path) == (tmp_path / "a" / "cat.png").resolve()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "cat.png").write_bytes(b"\x89PNG fake")
    moved = P.parse(S.tomllib.loads(text.replace("a/cat.png", "b/cat.png")), "t.toml", tmp_path)
    assert moved.case_hash == s.case_hash  # another checkout, same content: the same case
    (tmp_path / "b" / "cat.png").write_bytes(b"\x89PNG other")
    assert P.parse(S.tomllib.loads(text.replace("a/cat.png", "b/cat.png")), "t.toml", tmp_path).case_hash != s.case_hash
    for bad, expected in [
        (text.replace('api = "chat"', 'api = "completions"'), "only the chat API carries"),
        (
            GOOD.replace('{id = "a", text = "x"}', '{id = "a", text = "x", attachments = ["a/cat.png"]}'),
            "only a served model takes them",
        ),
        (text.replace("a/cat.png", "a/notes.txt"), "notes.txt: not an image, audio or video file"),
        (text.replace("a/cat.png", "a/dog.png"), "cannot read"),
    ]:
        with pytest.raises(S.SuiteError) as e:
            P.parse(S.tomllib.loads(bad), "t.toml", tmp_path)
        assert expected in str(e.value) and "\n" not in str(e.value)


def test_shipped_serving_suite_loads():
    s = P.load(ROOT / "suites" / "serving.toml")
    assert s.server.command.startswith("transformers serve {model}") and "--continuous-batching" in s.server.command
    assert {x.kind for x in s.schedules} >= {"solo", "permutation", "needle"}
    assert min(x.min_size for x in s.schedules if x.kind == "needle") >= 8 and len(s.prompts) >= 8


@pytest.mark.parametrize("name", ["determinism.toml", "determinism-bf16.toml"])
def test_shipped_suites_load(name):
    s = P.load(ROOT / "suites" / name)
    assert len(s.prompts) >= 16
    assert s.generation.max_new_tokens == 64
    assert {p.name for p in s.profiles} == {"default", "deterministic", "portable"}  # portable: CPU pins, cpu only
    assert s.profile("deterministic").torch_deterministic
    assert dict(s.profile("deterministic").env)["ATB_MATMUL_SHUFFLE_K_ENABLE"] == "0"


def test_prompt_file_errors(tmp_path: Path):
    (tmp_path / "p.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": \n')
    f = write_suite(
        tmp_path / "s.toml",
        GOOD.replace(
            'items = [{id = "a", text = "x"}, {id = "b", text = "y"}, {id = "c", text = "z"}]', 'file = "p.jsonl"'
        ),
    )
    with pytest.raises(S.SuiteError, match=r"p.jsonl:2: not valid JSON"):
        P.load(f)


@pytest.mark.process
def test_cli_malformed_suite_exit_2_one_line(tmp_path: Path):
    f = write_suite(tmp_path / "bad.toml", GOOD.replace("trials = 2", "trails = 2"))
    p = run_cli("run", str(f), "--out", str(tmp_path / "r"))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "bad.toml: schedules[1].trails: unknown key; did you mean 'trials'?" in lines[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()  # nothing runs before every suite is valid


@pytest.mark.process
def test_cli_usage_errors_exit_2(tmp_path: Path):
    assert run_cli("run", str(tmp_path / "missing.toml")).returncode == 2
    p = run_cli("run", str(ROOT / "suites" / "determinism.toml"), "--profile", "nope")
    assert p.returncode == 2 and "no profile 'nope'" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("run", str(ROOT / "suites" / "determinism.toml"), "--device", "tpu")
    assert p.returncode == 2 and "invalid choice" in p.stderr
    f = write_suite(tmp_path / "s.toml", GOOD)
    p = run_cli("run", str(f), "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "r"))
    assert p.returncode == 2 and "no such file or directory" in p.stderr and "Traceback" not in p.stderr


def test_frozen():
    s = parse(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "x"  # type: ignore[misc]


def test_the_data_model_does_not_import_its_parser():
    """One direction: suite_parse.py reads files into the classes of suite.py; suite.py never imports suite_parse
    (not even lazily), and `load` / `parse` live in the parser only."""
    import ast

    tree = ast.parse((ROOT / "harness" / "suite.py").read_text(encoding="utf-8"))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if "suite_parse" in m}, imported
    assert not hasattr(S, "load") and not hasattr(S, "parse")
    assert P.parse(S.tomllib.loads(GOOD), "t.toml").case_hash == parse(GOOD).case_hash
