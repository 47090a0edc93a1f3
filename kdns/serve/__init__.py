"""Serving: the lifecycle (`server`), UDP and TCP (`transport`), query bytes to response bytes
with the answer cache (`responder`), who may ask and how fast (`acl`, `ratelimit`), the
hot-path counters (`stats`), and `--workers`: the serving processes (`workers`, `worker`), the
store repeated to them (`publish`, `replica`) over a pipe (`frames`).
"""
