"""Suites on the real embedded model shared by more than one integration test module (each test module keeps the
suites only it runs)."""

# A latency gate: six prompts, solo, one warm-up pass and three measured ones. The latency-gate test runs it through
# a 15%-slower adapter and the sign-off test records it as one of its gates.
GATE_SUITE = """
[suite]
name = "gate"
version = 1
[model]
ref = "smollm2-135m"
[generation]
max_new_tokens = 16
[prompts]
items = [
  {id = "a", text = "Write a haiku about autumn leaves.", chat = true},
  {id = "b", text = "List five fruits that are rich in vitamin C.", chat = true},
  {id = "c", text = "def fibonacci(n):\\n"},
  {id = "d", text = "Write an SQL query that returns the ten customers with the highest total order value.", chat = true},
  {id = "e", text = "The old library at the end of the street had been closed for years, but one rainy evening"},
  {id = "f", text = "Return a JSON object with the keys name, age and city for a fictional person.", chat = true},
]
[[schedules]]
kind = "solo"
[perf]
warmup = 1
repeats = 3
[profiles.default]
"""
