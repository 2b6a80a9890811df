"""Served models through real processes and sockets: a server the harness starts per profile (here the small
fault-injecting server in tests/fake_openai.py, since `transformers serve` cannot fail on demand), retries,
per-request failures, start-up failures, body-size limits, the API key and TLS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import ROOT, load_report, only_run_dir, run_cli, run_plugin, write_suite

pytestmark = pytest.mark.process  # every test runs the CLI and a real server process

FAKE = f"{sys.executable} {ROOT / 'tests' / 'fake_openai.py'}"
KEY = "sk-test-8c1f0e77d2a94b5c"


def _suite(
    tmp_path: Path,
    *,
    command: str = f"{FAKE} --port {{port}} --logprobs",
    prompts: str = "",
    endpoint: str = "",
    server: str = "",
    profiles: str = "",
    api: str = "chat",
    prompts_file: str = "",
    perf: str = "",
) -> Path:
    prompts = prompts or (
        '{id = "a", text = "one two three"}, {id = "b", text = "four five six seven"}, '
        '{id = "c", text = "alpha beta"}, {id = "d", text = "red green blue"}'
    )
    profiles = profiles or (
        '[profiles.default]\nexpect = { cpu = "report" }\n'
        '[profiles.deterministic]\nenv = { HCCL_DETERMINISTIC = "true" }\nexpect = { cpu = "bitwise" }\n'
    )
    keys = {"retries": "2", "backoff_s": "0.05", "request_timeout_s": "5"}
    keys.update(ln.split(" = ", 1) for ln in endpoint.splitlines() if ln.strip())
    endpoint = "\n".join(f"{k} = {v}" for k, v in keys.items())
    skeys = {"startup_timeout_s": "30"}
    skeys.update(ln.split(" = ", 1) for ln in server.splitlines() if ln.strip())
    server = "\n".join(f"{k} = {v}" for k, v in skeys.items())
    return write_suite(
        tmp_path / "served.toml",
        f"""
[suite]
name = "served"
version = 1
[model]
ref = "fake-model"
[server]
command = "{command}"
{server}
[endpoint]
api = "{api}"
{endpoint}
[generation]
max_new_tokens = 6
[prompts]
{f'file = "{prompts_file}"' if prompts_file else f"items = [{prompts}]"}
[[schedules]]
kind = "solo"
[[schedules]]
kind = "permutation"
count = 2
[[schedules]]
kind = "needle"
trials = 3
min_size = 3
{profiles}
{perf}
""",
    )


def _records(run: Path, profile: str) -> list[dict]:
    return [json.loads(ln) for ln in (run / "records" / f"{profile}.jsonl").read_text().splitlines()]


def _no_secret_anywhere(run: Path, secret: str) -> None:
    hits = [p for p in run.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not hits, f"API key written to {hits}"


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_transient_faults_are_retried_and_logprobs_compared_like_fingerprints(tmp_path: Path, api: str):
    prompts = (
        '{id = "a", text = "one two three"}, {id = "b", text = "four five six"}, '
        '{id = "e500", text = "x FAULT:500x1"}, {id = "ebad", text = "y FAULT:badjsonx1"}, '
        '{id = "ereset", text = "z FAULT:resetx1"}'
    )
    suite = _suite(
        tmp_path,
        prompts=prompts,
        api=api,
        command=f"{FAKE} --port {{port}} --logprobs --key-env FAKE_KEY --echo-auth",
        endpoint='api_key_env = "FAKE_KEY"',
    )
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"), env={"FAKE_KEY": KEY})
    assert p.returncode == 0, p.stdout + p.stderr
    run = only_run_dir(tmp_path / "out")
    rep = load_report(tmp_path / "out")
    for prof in ("default", "deterministic"):
        recs = _records(run, prof)
        assert all(not r["error"] and r["level"] == "logprobs" for r in recs)
        retried = {r["prompt_id"]: r["extra"]["retried_after"][0] for r in recs if r["extra"].get("attempts", 1) > 1}
        # Each fault fires once per server, on the prompt's first request: the solo reference.
        assert set(retried) == {"e500", "ebad", "ereset"}
        assert retried["e500"].startswith("HTTP 500") and "malformed JSON" in retried["ebad"]
        assert "connection failed" in retried["ereset"]
    inv = next(v for v in rep["verdicts"] if v["profile"] == "deterministic" and v["property"] == "batch-invariance")
    assert inv["status"] == "pass" and inv["level"] == "logprobs" and inv["bitwise"] == inv["sequences"] > 10
    assert any("returned logprobs" in n for n in rep["notes"])
    # Each profile's server started with that profile's flags, and only those.
    assert "determinism flags: HCCL_DETERMINISTIC=true" in (run / "logs" / "deterministic.server.log").read_text()
    assert "determinism flags: none" in (run / "logs" / "default.server.log").read_text()
    # The key went to the server (it answers 401 otherwise) and the server logged it; the run keeps it nowhere.
    assert "<redacted>" in (run / "logs" / "default.server.log").read_text()
    _no_secret_anywhere(run, KEY)


def test_failed_requests_are_reported_per_request_with_the_server_log_and_exit_3(tmp_path: Path):
    prompts = (
        '{id = "a", text = "one two three"}, {id = "b", text = "four five six"}, {id = "c", text = "seven eight"}, '
        '{id = "dead", text = "q FAULT:reset"}, {id = "slow", text = "r FAULT:hang"}, {id = "refused", text = "s FAULT:400"}'
    )
    suite = _suite(
        tmp_path,
        prompts=prompts,
        endpoint="request_timeout_s = 1\nretries = 1",
        profiles='[profiles.default]\nexpect = { cpu = "report" }\n',
    )
    t0 = time.monotonic()
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == 3, p.stdout + p.stderr
    run = only_run_dir(tmp_path / "out")
    recs = _records(run, "default")
    failed = {r["prompt_id"]: r for r in recs if r["error"]}
    assert set(failed) == {"dead", "slow", "refused"}
    assert (
        failed["refused"]["extra"]["attempts"] == 1
        and "HTTP 400: prompt rejected by policy" in failed["refused"]["error"]
    )
    assert failed["dead"]["extra"]["attempts"] == 2 and "connection failed" in failed["dead"]["error"]
    assert failed["slow"]["extra"]["attempts"] == 2 and "timed out" in failed["slow"]["error"]
    # Everything else completed and was analysed: the run went on.
    assert sum(not r["error"] for r in recs) == sum(1 for r in recs if r["prompt_id"] in "abc")
    md = (run / "summary.md").read_text()
    assert "## Failed requests" in md and "Server log tail" in md and "POST /v1/chat/completions" in md
    assert "request failed: default prompt 'refused'" in p.stdout
    inv = next(v for v in load_report(tmp_path / "out")["verdicts"] if v["property"] == "batch-invariance")
    assert inv["failed"] > 0 and inv["sequences"] > 0
    assert time.monotonic() - t0 < 120


def _pass_order(run: Path) -> list[str]:
    passes = []
    for prof in ("default", "deterministic"):
        meta = json.loads((run / "records" / f"{prof}.meta.json").read_text())
        passes += [(p["started"], prof) for p in meta["passes"]]
    return [prof for _, prof in sorted(passes)]


def test_a_served_suite_calibrates_like_an_in_process_one(tmp_path: Path):
    """Each calibration run starts its servers; the baselines keep every run and thresholds fitted to their spread,
    and the next run is judged against those runs (its one server start per profile included)."""
    suite = _suite(tmp_path, perf="[perf]\nwarmup = 0\nrepeats = 2")
    store = tmp_path / "b"
    p = run_cli("calibrate", str(suite), "--runs", "3", "--baselines", str(store), "--out", str(tmp_path / "cal"))
    assert p.returncode == 0, p.stdout + p.stderr
    files = sorted(store.glob("*/served/*.json"))
    assert [f.name for f in files] == ["default.json", "deterministic.json"]
    for f in files:
        b = json.loads(f.read_text())
        assert len(b["runs"]) == 3 and b["calibration"]["runs"] == 3 and "load" in b["thresholds"]
    r = run_cli("run", str(suite), "--baselines", str(store), "--out", str(tmp_path / "next"))
    rows = {c["metric"]: c for c in load_report(tmp_path / "next")["perf"]["default"]}
    assert rows["load"]["runs"] == 3 and rows["load"]["status"] != "insufficient", r.stdout


def test_served_profiles_take_turns_pass_by_pass_each_against_its_own_server(tmp_path: Path):
    suite = _suite(tmp_path, perf="[perf]\nwarmup = 1\nrepeats = 2")
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == 0, p.stdout + p.stderr
    run = only_run_dir(tmp_path / "out")
    # Both servers up before the first measured pass, then A B, B A, A B: drift and neighbours hit both sides.
    assert _pass_order(run) == ["default", "deterministic", "deterministic", "default", "default", "deterministic"]
    servers = {j["profile"]: j["worker"]["server"] for j in load_report(tmp_path / "out")["jobs"]}
    assert servers["default"]["pid"] != servers["deterministic"]["pid"]
    assert all(s["stopped"].startswith("SIGTERM") for s in servers.values())
    # each server kept its own profile's flags
    assert "determinism flags: HCCL_DETERMINISTIC=true" in (run / "logs" / "deterministic.server.log").read_text()
    assert "determinism flags: none" in (run / "logs" / "default.server.log").read_text()


def test_a_served_suite_takes_a_reference_stack_whose_server_runs_with_its_python(tmp_path: Path):
    # the other stack: this venv's base interpreter, which has no harness (a served stack runs the server only),
    # and a setup file whose exports reach that stack's server alone
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    setup = tmp_path / "set_env.sh"
    setup.write_text("export HCCL_DETERMINISTIC=strict\n")
    fake = ROOT / "tests" / "fake_openai.py"
    suite = _suite(
        tmp_path,
        command=f"{{python}} {fake} --port {{port}} --logprobs",
        profiles='[profiles.default]\nexpect = { cpu = "report" }\n',
        # plumbing, not speed: two fake servers' microseconds would otherwise be a coin toss at 2%
        perf="[perf]\nwarmup = 0\nrepeats = 2\nreference_threshold = 5.0",
    )
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"), "--baselines", str(tmp_path / "b"),
                "--reference-python", base, "--reference-setup", str(setup))  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    run, rep = only_run_dir(tmp_path / "out"), load_report(tmp_path / "out")
    ref_log, default_log = ((run / "logs" / f"{p}.server.log").read_text() for p in ("reference", "default"))
    assert f"determinism flags: HCCL_DETERMINISTIC=strict; python {base}" in ref_log
    assert f"determinism flags: none; python {sys.executable}" in default_log
    # both sides' clients are this harness's own worker: only the server differs
    assert [json.loads((run / "jobs" / f"{p}.json").read_text())["python"] for p in ("reference", "default")] == [
        "",
        "",
    ]
    assert rep["reference"]["profile"] == "reference" and rep["reference"]["rows"]["default"]
    assert {c["status"] for c in rep["reference"]["rows"]["default"]} <= {"~", "insufficient"}


def test_when_one_profiles_server_will_not_start_the_other_profile_still_runs(tmp_path: Path):
    wrap = tmp_path / "wrap.sh"
    wrap.write_text(
        'if [ -n "$HCCL_DETERMINISTIC" ]; then echo "fatal: HCCL init failed" >&2; exit 7; fi\n'
        f'exec {FAKE} --port "$1" --logprobs\n'
    )
    suite = _suite(tmp_path, command=f"sh {wrap} {{port}}", perf="[perf]\nwarmup = 0\nrepeats = 2")
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == 3, p.stdout + p.stderr
    assert "server for profile 'deterministic' did not start" in p.stdout and "exited with status 7" in p.stdout
    run = only_run_dir(tmp_path / "out")
    recs = _records(run, "default")
    assert recs and all(not r["error"] for r in recs)
    assert "fatal: HCCL init failed" in (run / "summary.md").read_text()


def _listening_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.parametrize("case", ["crash", "bad-command", "port-in-use", "timeout"])
def test_a_server_that_does_not_start_is_an_infrastructure_error_per_profile(tmp_path: Path, case: str):
    marker = tmp_path / "started"
    blocker = _listening_port()
    port = blocker.getsockname()[1]
    if case != "port-in-use":
        blocker.close()
    commands = {
        "crash": (
            f"{sys.executable} -c 'import sys; print(\\\"fatal: no NPU visible\\\", file=sys.stderr); sys.exit(7)'",
            "exited with status 7 during start-up",
        ),
        "bad-command": ("no-such-inference-server --port {port}", "cannot run 'no-such-inference-server'"),
        "port-in-use": (
            f'{sys.executable} -c \'open(\\"{marker}\\", \\"w\\")\'',
            f"port {port} on 127.0.0.1 is already in use",
        ),
        "timeout": (f"{sys.executable} -c 'import time; time.sleep(60)'", "not healthy at"),
    }
    command, message = commands[case]
    suite = _suite(tmp_path, command=command, server=f"port = {port}\nstartup_timeout_s = 2\nstop_grace_s = 1")
    t0 = time.monotonic()
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    blocker.close()
    assert p.returncode == 3, p.stdout + p.stderr
    assert p.stdout.count(message) == 2, p.stdout  # both profiles tried, each says why
    assert "Traceback" not in p.stdout + p.stderr
    if case == "crash":
        assert "fatal: no NPU visible" in (only_run_dir(tmp_path / "out") / "summary.md").read_text()
    if case == "port-in-use":
        assert not marker.exists()  # refused before the command ran: nothing else answers our health check
    assert time.monotonic() - t0 < 60


def test_an_oversized_prompt_is_refused_before_anything_starts(tmp_path: Path):
    big = tmp_path / "big.jsonl"
    big.write_text(
        "".join(json.dumps({"id": f"small-{i}", "text": "hello"}) + "\n" for i in range(3))
        + json.dumps({"id": "huge-document", "text": "word " * 900_000})
        + "\n"
    )
    suite = _suite(tmp_path, prompts_file=str(big))
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == 2, p.stdout + p.stderr
    line = p.stderr.strip()
    assert len(line.splitlines()) == 1 and "prompt 'huge-document'" in line and "4.29 MiB" in line
    assert "endpoint.max_body_bytes" in line
    assert not (tmp_path / "out").exists()


def test_attachments_go_inline_and_count_base64_encoded_against_the_limit(tmp_path: Path):
    (tmp_path / "photo.png").write_bytes(os.urandom(3000))
    (tmp_path / "clip.wav").write_bytes(os.urandom(1200))
    prompts = (
        '{id = "a", text = "one two"}, {id = "m", text = "look", attachments = ["photo.png", "clip.wav"]}, '
        '{id = "c", text = "alpha beta"}'
    )
    suite = _suite(tmp_path, prompts=prompts, profiles='[profiles.default]\nexpect = { cpu = "report" }\n')
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == 0, p.stdout + p.stderr
    m = next(r for r in _records(only_run_dir(tmp_path / "out"), "default") if r["prompt_id"] == "m")
    assert {"media3000", "media1200", "look"} <= set(m["text"].split())  # the server decoded both files, byte for byte
    # 3.2 MiB of audio is under 4 MiB on disk but 4.27 MiB in the body: refused before anything starts, naming why.
    (tmp_path / "clip.wav").write_bytes(os.urandom(3_355_443))
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out2"))
    assert p.returncode == 2, p.stdout + p.stderr
    line = p.stderr.strip()
    assert len(line.splitlines()) == 1 and "prompt 'm'" in line and "4.27 MiB" in line and "base64-encoded" in line


@pytest.mark.parametrize("limit, passed", [(4194304, True), (0, False)])
def test_oversize_check_expects_a_4xx_with_a_message(tmp_path: Path, limit: int, passed: bool):
    suite = _suite(
        tmp_path,
        command=f"{FAKE} --port {{port}} --max-body {limit}",
        endpoint="oversize_check = true",
        profiles='[profiles.default]\nexpect = { cpu = "report" }\n',
    )
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == (0 if passed else 1), p.stdout + p.stderr
    v = next(v for v in load_report(tmp_path / "out")["verdicts"] if v["property"] == "input-limit")
    assert v["status"] == ("pass" if passed else "fail")
    assert ("HTTP 413: Message len not in (0, 4194304]" in v["reason"]) == passed
    if not passed:
        assert "expected a 4xx rejection, got HTTP 200" in v["reason"]


def test_pytest_items_for_a_served_suite_include_the_input_limit(tmp_path: Path):
    import xml.etree.ElementTree as ET

    suite = _suite(
        tmp_path, command=f"{FAKE} --port {{port}} --logprobs --max-body 0", endpoint="oversize_check = true"
    )
    junit = tmp_path / "junit.xml"
    p = run_plugin(suite, junit, "--out", str(tmp_path / "out"), cwd=tmp_path, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    cases = {
        (c.get("classname").rsplit(".", 1)[-1], c.get("name")): c for c in ET.parse(junit).getroot().iter("testcase")
    }
    names = {"batch-invariance", "baseline", "input-limit"}
    assert {n for _, n in cases} == names | {"html"} and len(cases) == 7  # 3 per profile, and the run's report
    failed = {k for k, c in cases.items() if c.find("failure") is not None}
    assert {n for _, n in failed} == {"input-limit"} and len(failed) == 2  # both profiles' servers took the huge body
    text = next(c for k, c in cases.items() if k in failed).find("failure")
    assert (
        "expected a 4xx rejection, got HTTP 200" in (text.text or text.get("message", ""))
        and "Traceback" not in p.stdout
    )


def _wait_healthy(url: str, srv: subprocess.Popen, timeout_s: float = 30) -> None:
    """Poll the health path: a fixed sleep is too short on a loaded runner and wasted time on an idle one."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert srv.poll() is None, f"the server exited with status {srv.returncode} before it was healthy"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} not healthy within {timeout_s:.0f}s")


def test_a_running_endpoint_gets_one_profile_and_a_note_that_flags_were_not_applied(tmp_path: Path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "fake_openai.py"), "--port", str(port)], stderr=subprocess.DEVNULL
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", srv)
        suite = _suite(tmp_path)
        p = run_cli(
            "run",
            str(suite),
            "--endpoint",
            f"http://127.0.0.1:{port}",
            "--profile",
            "deterministic",
            "--out",
            str(tmp_path / "out"),
        )
    finally:
        srv.terminate()
        srv.wait()
    # Text only (no --logprobs): a "bitwise" expectation cannot be judged, and says so (exit 2, not a false pass).
    assert p.returncode == 2, p.stdout + p.stderr
    rep = load_report(tmp_path / "out")
    assert [j["profile"] for j in rep["jobs"]] == ["deterministic"]
    assert any("could not apply profile 'deterministic'" in n and "HCCL_DETERMINISTIC=true" in n for n in rep["notes"])
    inv = next(v for v in rep["verdicts"] if v["property"] == "batch-invariance")
    assert inv["status"] == "not comparable" and inv["level"] == "text" and "text only" in inv["reason"]
    assert not (only_run_dir(tmp_path / "out") / "logs" / "deterministic.server.log").exists()


def test_api_key_variable_must_be_set(tmp_path: Path):
    suite = _suite(tmp_path, endpoint='api_key_env = "HARNESS_TEST_UNSET_KEY"')
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"), env={"HARNESS_TEST_UNSET_KEY": ""})
    assert p.returncode == 2
    assert "HARNESS_TEST_UNSET_KEY, which is not set" in p.stderr and "Traceback" not in p.stderr


def test_mutual_tls_verified_by_default(tmp_path: Path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("harness-client")
    paths = {n: tmp_path / f"{n}.pem" for n in ("ca", "server", "client")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    command = (
        f"{FAKE} --port {{port}} --certfile {paths['server']} --keyfile {paths['server']} --client-ca {paths['ca']}"
    )
    base = 'base_url = "https://{host}:{port}"\n'
    profile = '[profiles.default]\nexpect = { cpu = "tokens" }\n'
    # Without the CA bundle the server's certificate is not trusted: the server never becomes healthy to us.
    untrusted = _suite(tmp_path, command=command, endpoint=base, server="startup_timeout_s = 3", profiles=profile)
    p = run_cli("run", str(untrusted), "--out", str(tmp_path / "out1"))
    assert p.returncode == 3 and "not healthy at https://" in p.stdout
    trusted = _suite(
        tmp_path,
        command=command,
        profiles=profile,
        endpoint=base + f'ca_bundle = "{paths["ca"]}"\nclient_cert = "{paths["client"]}"\n'
        f'client_key = "{paths["client"]}"',
    )
    p = run_cli("run", str(trusted), "--out", str(tmp_path / "out2"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert all(not r["error"] for r in _records(only_run_dir(tmp_path / "out2"), "default"))
