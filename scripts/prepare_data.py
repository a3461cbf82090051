"""Build the tokenizer and token caches: python scripts/prepare_data.py [overrides] (the same as `tnl prepare-data`)."""

from tnl.commands.prepare_data import main

if __name__ == "__main__":
    main()
