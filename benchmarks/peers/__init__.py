"""LUMOS side by side with the peers: Torch-Pruning, stochastic gates (STG), LassoNet,
global magnitude masks, random-forest and mutual-information rankings (``python -m
benchmarks.peers``)."""
