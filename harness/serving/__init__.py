"""Served suites: a model behind an OpenAI-compatible server, started per profile or already running.

- `spec`: a suite's [server] and [endpoint] sections (parsed, rendered, secrets redacted);
- `server`: a server started per profile, healthy before the first request, stopped as a process group;
- `info`: which program a server command starts, and the versions and chip it runs with (the served device key);
- `runs`: a served suite's workers, each against its profile's own server (started, taking turns, stopped);
- `wire`: the OpenAI wire format: request bodies, their size against the server's limit, TLS and key settings.
"""
