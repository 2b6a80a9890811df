"""Every status vocabulary of the harness, in one place. The words are what reports, records, baselines and tests
read: change one here and it changes everywhere (and in files already written). Each alias says who uses it and
what its words mean.

Two families meet in a run: a *judgement* of what the model did (pass / fail, regressed, GO) and an *infrastructure*
outcome of how the harness ran (crashed, timeout, error). "pass"/"fail" are a verdict's and a run's words;
"passed"/"failed"/"skipped" are pytest's, which a reported check follows."""

from __future__ import annotations

from typing import Literal

# ---- determinism (harness.analysis.determinism) ------------------------------------------------------------------

# A compared sequence against its reference (Comparison.level), best first: bit-identical logits, the same tokens,
# a near-tie at the first divergence, a real divergence.
Level = Literal["bitwise", "tokens", "close", "diverged"]
# What a suite's property expects (Verdict.expect): at least `bitwise` / `tokens` / `close`; "vary": outputs must
# differ (a control); "report": no expectation, the numbers are only reported.
Expectation = Literal["bitwise", "tokens", "close", "vary", "report"]
# What a Verdict shows as its expectation: an Expectation; "-": none (no baseline, baseline updated or not
# comparable); "4xx": the deliberate oversized request (served runs) expects a client error.
ShownExpectation = Expectation | Literal["-", "4xx"]
# A determinism Verdict's status: "pass" / "fail" against its expectation; "report": reported, not judged; "no data":
# nothing to compare; "no baseline": none recorded for this key; "not comparable": the baseline is for other inputs;
# "updated": the baseline was re-recorded by this run.
VerdictStatus = Literal["pass", "fail", "report", "no data", "no baseline", "not comparable", "updated"]
# What a comparison could see (Verdict.level), best first: logits bits, a server's logprobs, or only text.
Seen = Literal["logits", "logprobs", "text"]

# ---- timing (harness.analysis.stats, perf and load time against baselines) ---------------------------------------

# A timing row against its baseline or its reference setting (Change.status): "regressed" / "improved" beyond the
# threshold; "~": no significant change beyond it; "insufficient": too few samples; "not comparable": shown, not
# gated (a baseline of other hardware); "failed": a side has no samples; "noisy": only passes that ran beside other
# work decide it.
ChangeStatus = Literal["regressed", "improved", "~", "insufficient", "not comparable", "failed", "noisy"]

# ---- workers and servers (harness.jobs, harness.runner, a load-time sample) --------------------------------------

# How one worker job ended (JobOutcome.status, LoadSample.status): "ok"; "crashed": it exited non-zero or wrote
# fewer records than planned; "timeout": it ran past its limit; "load-failed": the model or device did not load;
# "server-failed": its server did not start; "server-crashed": its server exited on its own mid-run; "cancelled":
# the run was cancelled by a signal (harness.cancel) while it ran or before it started. All but "ok" are
# infrastructure outcomes.
WorkerStatus = Literal["ok", "crashed", "timeout", "load-failed", "server-failed", "server-crashed", "cancelled"]

# ---- a run's checks and its result (harness.run, harness.report, harness.html) -----------------------------------

# One reported check (run.Check.outcome), in pytest's words: "passed", "failed", "skipped" (nothing to judge it
# against: no baseline recorded, or no result).
CheckOutcome = Literal["passed", "failed", "skipped"]
# A run's result from its exit code (RunResult.result, report.html's badge): 0 "pass", 1 "fail", else "error".
RunStatus = Literal["pass", "fail", "error"]
# Why report.html was not written (html.NotWritten.cause): "missing dependency": jinja2, matplotlib or markdown-it
# is not installed; "error": drawing or writing it raised.
NotWrittenCause = Literal["missing dependency", "error"]

# ---- baselines (harness.baselines) -------------------------------------------------------------------------------

# How a recorded baseline's device key relates to this run's (DeviceKey.tier): the same key; the same hardware with
# other software (a torch, CANN or transformers upgrade); other hardware of the same device type.
Tier = Literal["same key", "other software", "other hardware"]

# ---- sign-off (harness.signoff) ----------------------------------------------------------------------------------

# One gate (a suite) of a sign-off (Gate.verdict): "pass" / "fail"; "incomplete": skipped checks or rows it could
# not judge; "error": an infrastructure error (exit 3); "not comparable": a baseline cannot be compared (exit 2);
# "not run": the doctor found errors or the sign-off stopped before it; "not in scope": it needs what is not
# installed here (vLLM, ...).
GateVerdict = Literal["pass", "fail", "incomplete", "error", "not comparable", "not run", "not in scope"]
# The sign-off's decision from its gates and the doctor (SignoffResult.result): "GO", "NO-GO", "INCOMPLETE".
Decision = Literal["GO", "NO-GO", "INCOMPLETE"]

# ---- doctor (harness.doctor) -------------------------------------------------------------------------------------

# A doctor finding: "error" blocks a run (exit 2), "warning" is shown and allowed, "info" is context.
Severity = Literal["error", "warning", "info"]


def run_result(exit_code: int) -> RunStatus:
    """A run's result in a word, from its exit code: 0 pass, 1 fail (a check failed), anything else error."""
    if exit_code == 0:
        return "pass"
    if exit_code == 1:
        return "fail"
    return "error"
