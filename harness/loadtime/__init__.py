"""Load time (`harness run suites/loadtime.toml`): cold and warm model loads under OMP_NUM_THREADS settings.

- `kind`: the run kind: the sweep of fresh worker processes, interleaved setting by setting, and its checks;
- `data`: what a sweep is and what it measured (the suite, the target, the samples), shared by the sweep and reports;
- `analysis`: samples in, summaries, a recommendation and size scaling out (pure functions);
- `report`: console and summary.md tables, report.json and the PNG plot.
"""
