"""`python -m kdns`: the same as the `kdns` command."""

from kdns.cli import main

main()
