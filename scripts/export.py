"""Export a checkpoint: python scripts/export.py checkpoint=PATH out_dir=DIR [overrides] (the same as `tnl export`)."""

from tnl.commands.export import main

if __name__ == "__main__":
    main()
