"""`python -m kdns`: the same as the `kdns` command."""

from .cli import main

main()
