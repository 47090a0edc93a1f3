"""`python -m tests.e2e.short_idle SECONDS serve ...`: kdns with a shorter watch idle timeout.

kdns gives up on a watch that has sent nothing (not even a bookmark) for `idle_timeout` seconds
(120 s in production, twice the apiserver's bookmark period) and has no flag for it. The hung
apiserver fault freezes kube-apiserver for 30 s; to see kdns abandon the silent connection within
that time, its kdns runs with a shorter idle timeout set here, before the CLI builds anything.
Everything else is `python -m kdns`.
"""

from __future__ import annotations

import functools
import sys

from kdns import cluster, reflector


def main() -> None:
    seconds = float(sys.argv.pop(1))
    # ClusterSource builds its settings from this name when it is given none (the server does).
    short = functools.partial(reflector.WatchSettings, idle_timeout=seconds)
    setattr(cluster, "WatchSettings", short)  # noqa: B010 - assigning a class name; mypy agrees
    from kdns.cli import main as kdns_main

    kdns_main()


if __name__ == "__main__":
    main()
