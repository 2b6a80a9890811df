"""Hostile and careless input (issue #13): each reproduction ends in one line naming the file, key or value and
what to do, with exit 2 (input) or 3 (environment), before any model loads where it can be known then, and never
with a traceback. Runs go through the real CLI in-process with a fake model (tests/fakes.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import fakes
from .helpers import cli_in_process as harness
from .helpers import refused, suite, write_suite


@pytest.fixture
def fake(monkeypatch, tmp_path: Path) -> list[str]:
    """The models 'prepared' by runs in this test: none may be, when the input is refused."""
    return fakes.install(monkeypatch, tmp_path / "model")


def test_suite_file_not_utf8(tmp_path: Path, fake):
    bad = tmp_path / "b.toml"
    bad.write_bytes(b"\xe9\n")
    code, _, err = harness("run", bad, "--out", tmp_path / "out")
    refused(code, err, str(bad), "not UTF-8", "byte 0xe9")
    assert not fake and not (tmp_path / "out").exists()


def test_prompt_file_not_utf8(tmp_path: Path, fake):
    (tmp_path / "p.jsonl").write_bytes(b'{"id":"a","text":"one"}\n{"id":"c","text":"caf\xe9"}\n')
    code, _, err = harness("run", suite(tmp_path, prompts='file = "p.jsonl"'), "--out", tmp_path / "out")
    refused(code, err, "p.jsonl:2", "not UTF-8")
    assert not fake


@pytest.mark.parametrize("key", ["a\nb", "\x1b[31mred", "x\u2028y", "\x85", "\u202egnp.exe"])
def test_hostile_keys_are_named_escaped_on_one_line(tmp_path: Path, fake, key: str):
    f = suite(tmp_path)
    f.write_text(f.read_text().replace("[model]\n", f"[model]\n{json.dumps(key)} = 1\n"), encoding="utf-8")
    code, _, err = harness("run", f, "--out", tmp_path / "out")
    line = refused(code, err, "model.", "unknown key")
    assert key not in line and key.encode("unicode_escape").decode() in line


@pytest.mark.parametrize(
    "flag, where",
    [("--out", "a-file"), ("--out", "a-file/sub"), ("--baselines", "a-file"), ("--baselines", "a-file/sub")],
)
def test_a_file_where_a_directory_goes_is_refused_before_the_model_loads(tmp_path: Path, fake, flag: str, where: str):
    (tmp_path / "a-file").write_text("not a directory\n")
    args = {"--out": tmp_path / "out", "--baselines": tmp_path / "bl", flag: tmp_path / where}
    code, _, err = harness("run", suite(tmp_path), *(x for kv in args.items() for x in kv))
    refused(code, err, f"{flag} {tmp_path / where}", "is not a directory")
    assert not fake  # refused before any model was prepared
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "-inf", "1e400", "soon"])
def test_worker_timeout_must_be_a_positive_finite_number(tmp_path: Path, fake, value: str):
    code, _, err = harness("run", suite(tmp_path), "--out", tmp_path / "out", f"--worker-timeout={value}")
    refused(code, err, "--worker-timeout", repr(value))
    assert not fake and not (tmp_path / "out").exists()


def test_worker_timeout_accepts_seconds(tmp_path: Path, fake):
    code, out, err = harness("run", suite(tmp_path), "--out", tmp_path / "out", "--worker-timeout", "0.5")
    assert code == 0, out + err


# Traversal, absolute, NUL, over-long (bytes and characters), empty, hidden, and Unicode look-alikes of "x", "/"
# and "." (fullwidth x, fullwidth solidus, one dot leader).
UNSAFE = [
    "x/../../escaped",
    "..",
    ".",
    "/abs/escaped",
    "a\0b",
    "a" * 101,
    "é" * 130,
    "",
    " ",
    "-x",
    ".hidden",
    "a b",
    "a\\b",
    "ｘ",
    "..／..／x",
    "\u2024\u2024",
    "x\u2024y",
    "*",
    "a\nb",
]
RULE = "may use only letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_suite_names_are_refused_before_anything_is_written(tmp_path: Path, fake, name: str):
    (tmp_path / "a" / "b").mkdir(parents=True)
    f = suite(tmp_path / "a" / "b", name="@")
    f.write_text(f.read_text().replace('"@"', json.dumps(name)), encoding="utf-8")
    before = _tree(tmp_path)
    code, _, err = harness(
        "run",
        f,
        "--out",
        tmp_path / "a" / "b" / "runs" / "out",
        "--baselines",
        tmp_path / "bl",
        "--update-baselines",
        "--reason",
        "r",
    )
    refused(code, err, f"{f}: suite.name: ", RULE)
    assert not fake and _tree(tmp_path) == before


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_profile_names_are_refused_before_anything_is_written(tmp_path: Path, fake, name: str):
    f = suite(tmp_path)
    f.write_text(f.read_text().replace("[profiles.default]", f"[profiles.{json.dumps(name)}]"), encoding="utf-8")
    before = _tree(tmp_path)
    code, _, err = harness(
        "run", f, "--out", tmp_path / "out", "--baselines", tmp_path / "bl", "--update-baselines", "--reason", "r"
    )
    refused(code, err, f"{f}: profiles: ", RULE)
    assert not fake and _tree(tmp_path) == before


@pytest.mark.parametrize("name", ["s", "S-1.2_x", "a" * 100, "0"])
def test_safe_names_run(tmp_path: Path, fake, name: str):
    code, out, err = harness(
        "run",
        suite(tmp_path, name=name),
        "--out",
        tmp_path / "out",
        "--baselines",
        tmp_path / "bl",
        "--update-baselines",
        "--reason",
        "r",
    )
    assert code == 0, out + err
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name != "history"][0].endswith(f"-{name}")
    assert len(list((tmp_path / "bl").rglob(f"{name}/default.json"))) == 1


@pytest.mark.parametrize(
    "name", ["/" + "../" * 6 + "escaped", "x/" + "../" * 7 + "escaped", "/abs/escaped", "a\0b", "x" * 256, "é" * 128]
)
def test_paths_built_from_names_stay_inside_their_root(tmp_path: Path, name: str):
    """The second line of defence, for a name that got past the suite's checks: .. and / that climb out of the
    root, an absolute name, a NUL, a name over 255 bytes."""
    from harness.baselines import Store
    from harness.devicekey import DeviceKey
    from harness.errors import USAGE, HarnessError
    from harness.paths import inside
    from harness.run import RunDir

    root = tmp_path / "a" / "root"
    refusals = [
        lambda: inside(root, root / "sub" / name),
        lambda: RunDir.create(root / "out", name),
        lambda: Store(root).path(DeviceKey("cpu", "cpu-x", "torch2"), name, "default"),
        lambda: Store(root).path(DeviceKey("cpu", "cpu-x", "torch2"), "s", name),
    ]
    for refuse in refusals:
        with pytest.raises(HarnessError) as e:
            refuse()
        assert e.value.code == USAGE and len(str(e.value).splitlines()) == 1
    assert _tree(tmp_path) == set()  # nothing made, inside or out


@pytest.mark.parametrize("name", ["ｘ", "..／..／x", "\u2024\u2024", "a..b", "x" * 255])
def test_look_alikes_are_ordinary_names_inside_the_root(tmp_path: Path, name: str):
    from harness.paths import inside

    assert inside(tmp_path, tmp_path / name) == tmp_path / name


def test_model_names_and_device_key_parts_become_safe_directory_names():
    from harness import baselines, devicekey

    for ref in ["/m/../..", "/m/ｘ", "/m/..／..／x", "/m/" + "é" * 200, "/m/a b/", "/m/\u2024\u2024"]:
        d = baselines.suite_dir("s", ref, True)
        assert d.startswith("s@") and "/" not in d and len(d.encode()) <= 100 and d[2:] not in ("", ".", "..")
    key = devicekey.device_key(
        {
            "device": "cpu",
            "cpu_capability": "../..",
            "cpu_model": "/etc/" + "x" * 300,
            "threads": "../1",
            "torch": "2.1/../..",
        }
    )
    assert "/" not in str(key) and len(str(key).encode()) < 255 and ".." not in str(key).split("-")


def test_model_cache_names_are_cut_to_fit(tmp_path: Path, monkeypatch):
    from harness import models

    gguf = tmp_path / ("é" * 120 + ".gguf")  # 245 bytes: a legal file name whose cache name would not be
    gguf.write_bytes(b"weights")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(
        models, "_convert_gguf", lambda src, dest: (dest.mkdir(parents=True), (dest / "config.json").write_text("{}"))
    )
    out = models.prepare(str(gguf))
    assert out.parent == tmp_path / "cache" / "models" and (out / "config.json").is_file()
    assert len(f"{out.name}.tmp-4194304".encode()) <= 255


def _only(root: Path, pattern: str) -> Path:
    found = list(root.rglob(pattern))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: d["outputs"].update(a={}), "outputs.a: prompt_id, tokens,"),  # the issue's reproduction
        (lambda d: d["outputs"]["a"].pop("topk_ids"), "outputs.a: topk_ids missing"),
        (lambda d: d["outputs"]["a"].update(tokens="123"), "outputs.a.tokens: expected a list of integers"),
        (lambda d: d["outputs"]["a"].update(tokens=[True, 1, 2]), "outputs.a.tokens: expected a list of integers"),
        (lambda d: d["outputs"]["a"].update(pieces=["1"]), "outputs.a: 3 tokens without one piece"),
        (lambda d: d["outputs"]["a"].update(topk_logprobs=[["x"]] * 3), "outputs.a.topk_logprobs: expected a list of"),
        (lambda d: d["outputs"]["a"].update(level="bits"), "outputs.a.level: expected logits, logprobs or text"),
        (lambda d: d["outputs"].update(a=[]), "outputs.a: expected an object"),
        (lambda d: d.update(outputs=[]), "outputs: expected an object"),
        (lambda d: d.update(environment={"device": "cpu"}), "environment.device: expected an object"),
        (lambda d: d["environment"]["device"].update(torch=["2.1"]), "environment.device.torch: expected a string"),
        (lambda d: d["environment"]["device"].update(torch=False), "environment.device.torch: expected a string"),
        (lambda d: d["environment"]["device"].update(torch=0), "environment.device.torch: expected a string"),
        (lambda d: d.update(provenance=None), "provenance: expected an object"),
        (lambda d: d.update(latency={"solo tpot": ["fast"]}), "latency: expected an object of lists of numbers"),
        (lambda d: d.update(load_s=7), "load_s: expected a list of numbers"),
        (lambda d: d.pop("outputs"), "missing 1 required positional argument: 'outputs'"),
    ],
)
def test_damaged_baselines_are_not_comparable_and_the_report_is_written(tmp_path: Path, fake, damage, words):
    f = suite(tmp_path)
    code, out, err = harness(
        "run", f, "--out", tmp_path / "r0", "--baselines", tmp_path / "bl", "--update-baselines", "--reason", "first"
    )
    assert code == 0, out + err
    b = _only(tmp_path / "bl", "default.json")
    data = json.loads(b.read_text())
    damage(data)
    b.write_text(json.dumps(data))
    code, out, err = harness("run", f, "--out", tmp_path / "r1", "--baselines", tmp_path / "bl")
    assert code == 2 and "Traceback" not in out + err, out + err
    rep = json.loads(_only(tmp_path / "r1", "report.json").read_text())
    assert _only(tmp_path / "r1", "summary.md").is_file()
    v = next(v for v in rep["verdicts"] if v["property"] == "baseline")
    assert v["status"] == "not comparable" and words in v["reason"] and str(b) in v["reason"], v["reason"]
    assert len([ln for ln in out.splitlines() if "malformed baseline" in ln]) == 1


LOADTIME = """
[suite]
name = "lt"
version = 1
[model]
ref = "fake-model"
[loadtime]
omp = [1]
repeats = 1
drop_caches = false
"""


@pytest.mark.parametrize("kind", ["determinism", "loadtime"])
@pytest.mark.parametrize("blocked", ["a file where the key's folder goes", "/proc"])
def test_unwritable_baselines_exit_3_and_keep_the_report(tmp_path: Path, fake, kind: str, blocked: str):
    """Root ignores read-only permissions, so the write is made to fail another way: a regular file where the device
    key's folder must go, or a store under /proc, where nothing can be created."""
    from harness.devicekey import device_key

    f = suite(tmp_path) if kind == "determinism" else write_suite(tmp_path / "lt.toml", LOADTIME)
    store = tmp_path / "bl"
    if blocked == "/proc":
        store = Path("/proc/self/harness-baselines")
    else:
        store.mkdir()
        (store / str(device_key(fakes.DEVICE))).write_text("in the way\n")
    code, out, err = harness(
        "run", f, "--out", tmp_path / "out", "--baselines", store, "--update-baselines", "--reason", "r"
    )
    assert code == 3 and "Traceback" not in out + err, out + err
    assert _only(tmp_path / "out", "summary.md").is_file() and _only(tmp_path / "out", "report.json").is_file()
    lines = [ln for ln in out.splitlines() if "cannot write the baseline" in ln]
    assert len(lines) == 1 and str(store) in lines[0], out


def test_a_needle_among_one_prompt_is_refused_before_the_run(tmp_path: Path, fake):
    f = suite(tmp_path, prompts='items = [{id = "a", text = "one"}]')
    f.write_text(f.read_text() + '[[schedules]]\nkind = "needle"\n', encoding="utf-8")
    code, _, err = harness("run", f, "--out", tmp_path / "out")
    refused(code, err, "schedules[2].kind: a needle schedule needs at least 2 prompts")
    assert not fake


# ---- a server that cannot be reached, or a proxy in front of it: the message names the cause ----------------------

SERVED = """
[suite]
name = "served"
version = 1
[endpoint]
base_url = "{url}"
api = "chat"
retries = 0
request_timeout_s = 10
{extra}
[generation]
max_new_tokens = 2
[prompts]
items = [{{id = "a", text = "one"}}]
[[schedules]]
kind = "solo"
[profiles.default]
"""


def _served_failure(tmp_path: Path, url: str, extra: str = "") -> str:
    f = write_suite(tmp_path / "served.toml", SERVED.format(url=url, extra=extra))
    code, out, err = harness("run", f, "--out", tmp_path / "out", "--baselines", tmp_path / "bl")
    assert code == 3 and "Traceback" not in out + err, out + err
    job = json.loads(_only(tmp_path / "out", "report.json").read_text())["jobs"][0]
    assert job["status"] == "load-failed" and "could not load the model or device" not in job["description"]
    assert job["description"] in out
    return job["description"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_named(tmp_path: Path):
    url = f"http://127.0.0.1:{_free_port()}"
    assert f"server at {url} refused the connection" in _served_failure(tmp_path, url)


NGINX_400 = (
    b"<html>\r\n<head><title>400 No required SSL certificate was sent</title></head>\r\n<body>\r\n<center>"
    b"<h1>400 Bad Request</h1></center>\r\n<center>No required SSL certificate was sent</center>\r\n<hr>"
    b"<center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
)


def test_an_html_error_page_from_a_proxy_is_named_by_its_title(tmp_path: Path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Proxy(BaseHTTPRequestHandler):
        def _page(self):
            self.send_response(400)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(NGINX_400)))
            self.end_headers()
            self.wfile.write(NGINX_400)

        do_GET = do_POST = _page

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        why = _served_failure(tmp_path, f"http://127.0.0.1:{srv.server_port}")
    finally:
        srv.shutdown()
    assert "HTTP 400 from the proxy" in why and ": 400 No required SSL certificate was sent" in why
    assert "<" not in why and "client_cert" in why


def test_a_server_that_wants_a_client_certificate_is_named(tmp_path: Path):
    import subprocess
    import sys
    import time

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    port = _free_port()
    srv = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "fake_openai.py"),
            "--port",
            str(port),
            "--certfile",
            str(tmp_path / "server.pem"),
            "--keyfile",
            str(tmp_path / "server.pem"),
            "--client-ca",
            str(tmp_path / "ca.pem"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        why = _served_failure(tmp_path, f"https://127.0.0.1:{port}", f'ca_bundle = "{tmp_path / "ca.pem"}"')
    finally:
        srv.kill()
        srv.wait()
    assert "TLS handshake failed: the server requires a client certificate" in why
