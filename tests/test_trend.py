"""harness trend on generated histories with known steps: Apache Otava finds them where they are, and pure noise
gives none."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from harness import cli, history, trend
from harness.history import Headline

otava = pytest.importorskip(
    "otava.analysis", reason="Apache Otava is not installed: pip install --no-deps apache-otava==0.8.0 (nox does)"
)

HW = "cpu-avx512-intel-6-167-t2"


def generate(
    root: Path, metric: str, values: list[float], *, torch_at: int | None = None, profile: str = "default"
) -> Path:
    for i, v in enumerate(values):
        torch = "2.13.0" if torch_at is not None and i >= torch_at else "2.12.1"
        h = Headline("nightly", profile, HW, {"device": "cpu", "torch": torch}, {metric: v}, "m", "h")
        history.append(root, [h], run_id=f"night-{i + 1:02d}", exit_code=0, when=1_800_000_000.0 + 86_400 * i)
    return root / HW / "nightly" / f"{profile}.csv"


def noisy(n: int, seed: int, level: float = 50.0, sd: float = 0.01) -> list[float]:
    rng = random.Random(seed)
    return [level * (1 + sd * rng.gauss(0, 1)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_a_5_percent_step_at_run_20_of_30_is_found_at_run_20(tmp_path: Path, seed: int):
    values = noisy(30, seed)
    values[20:] = [v * 1.05 for v in values[20:]]
    generate(tmp_path, "solo.tpot.p50", values, torch_at=20)
    t = trend.analyse(history.read_all(tmp_path))
    assert len(t.shifts) == 1, t.shifts
    s = t.shifts[0]
    assert abs(s.index - 20) <= 1 and s.p < trend.PVALUE and 0.03 < s.rel < 0.07
    assert s.row.attributes["run_id"] == f"night-{s.index + 1:02d}"
    assert s.env == ("torch 2.12.1 -> 2.13.0",)  # the upgrade is named at the run where the shift starts


@pytest.mark.parametrize("seed", range(20))
def test_30_runs_of_noise_give_no_change_point(tmp_path: Path, seed: int):
    generate(tmp_path, "solo.tpot.p50", noisy(30, 100 + seed))
    assert trend.analyse(history.read_all(tmp_path)).shifts == []


def cli_trend(capsys, root: Path, *args: str) -> tuple[int, str, str]:
    code = cli.main(["trend", "--history", str(root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_gated_metric_worse_beyond_its_threshold_fails(tmp_path: Path, capsys):
    values = noisy(30, 1)
    values[20:] = [v * 1.10 for v in values[20:]]
    generate(tmp_path, "solo.tpot.p50", values, torch_at=20)
    code, out, _ = cli_trend(capsys, tmp_path)
    assert code == 1, out
    line = next(ln for ln in out.splitlines() if "solo.tpot.p50" in ln and ln.startswith("| +"))
    assert "night-21" in line and "regressed" in line and "torch 2.12.1 -> 2.13.0" in line and "+10." in line
    assert "result: FAIL (exit 1)" in out
    # a looser gate for this metric: the same shift is shown, and passes
    code, out, _ = cli_trend(capsys, tmp_path, "--threshold", "tpot=0.2")
    assert code == 0 and "worse, within 20%" in out


def test_better_or_ungated_shifts_do_not_fail(tmp_path: Path, capsys):
    faster = noisy(30, 2)
    faster[15:] = [v * 0.9 for v in faster[15:]]
    generate(tmp_path, "solo.tpot.p50", faster, profile="a")
    tail = noisy(30, 3)
    tail[15:] = [v * 1.3 for v in tail[15:]]
    generate(tmp_path, "solo.tpot.p99", tail, profile="b")  # tails are reported, not gated
    code, out, _ = cli_trend(capsys, tmp_path)
    assert code == 0, out
    assert "improved" in out and "worse, not gated" in out


def test_two_runs_say_plainly_there_are_too_few(tmp_path: Path, capsys):
    generate(tmp_path, "solo.tpot.p50", [50.0, 80.0])
    code, out, _ = cli_trend(capsys, tmp_path)
    assert code == 0
    assert "too few runs for change points" in out and re.search(r"\|\s+2 \|", out)  # the histories, 2 runs each


def test_an_unreadable_row_is_a_line_not_a_crash(tmp_path: Path, capsys):
    path = generate(tmp_path, "solo.tpot.p50", noisy(8, 4))
    lines = path.read_text().splitlines(keepends=True)
    lines[4] = lines[4].replace(",", ";")
    path.write_text("".join(lines))
    code, out, err = cli_trend(capsys, tmp_path)
    assert code == 0 and f"! {path}:5: " in out and "Traceback" not in out + err
    assert re.search(r"\|\s+7 \|", out)  # the other seven rows are read


def test_no_history_or_no_otava_is_one_line(tmp_path: Path, capsys, monkeypatch):
    code, out, err = cli_trend(capsys, tmp_path / "none")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no history there" in err
    generate(tmp_path, "a", [1.0, 2.0])
    monkeypatch.setitem(__import__("sys").modules, "otava.analysis", None)
    code, out, err = cli_trend(capsys, tmp_path)
    assert code == 2 and "pip install --no-deps apache-otava" in err and len(err.strip().splitlines()) == 1
