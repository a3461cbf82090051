"""Document-level perplexity: python scripts/evaluate.py model_path=PATH [overrides] (the same as `tnl evaluate`)."""

from tnl.commands.evaluate import main

if __name__ == "__main__":
    main()
