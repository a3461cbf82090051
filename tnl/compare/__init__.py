"""Comparison runs under one protocol (`python scripts/compare.py`): train every arm through `tnl train`, pick
each arm's learning rate by validation loss, evaluate through `tnl evaluate`, and write docs/results.md.

Above the commands layer: it starts `tnl` subprocesses and reads their run folders; nothing in tnl imports it.
"""
