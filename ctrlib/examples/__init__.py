"""Runnable training scripts: ``torchrun --nproc_per_node 2 -m ctrlib.examples.<name> --help``."""
