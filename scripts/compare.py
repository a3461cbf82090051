"""Train, tune, evaluate and tabulate a set of arms under one protocol: python scripts/compare.py [--help]."""

from tnl.compare.cli import main

if __name__ == "__main__":
    main()
