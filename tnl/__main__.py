"""`python -m tnl <command> ...`: the same as the `tnl` console script."""

from tnl.cli import main

main()
