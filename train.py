"""Train a TNL language model: python train.py experiment=quickstart [key=value ...] (the same as `tnl train`).

Kept for `accelerate launch train.py ...` and `torchrun train.py ...`, which take a script.
"""

from tnl.commands.train import main

if __name__ == "__main__":
    main()
