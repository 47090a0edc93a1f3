"""What tests/ and bench/ share, so that neither imports the other.

- `apiserver`: an API server double speaking the real list/watch wire protocol (chunked watch
  streams, bookmarks, 410 Expired, cuts, outages), and `LoopStore`, a real store fed the way the
  server feeds it.
- `controlplane`: the real etcd, kube-apiserver and kube-controller-manager (built by
  tests/e2e/build.sh), started as plain processes on free ports.
- `fuzz`: random and mutated packets, judged against what the answer must be
  (`python -m testkit.fuzz`).

Not installed with kdns: it is the project's own harness.
"""
