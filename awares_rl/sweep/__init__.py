"""Reward-weight sweeps: trials of GRPO from one SFT checkpoint on Ray Tune, and the accuracy /
RTR Pareto front they draw (``awares-rl sweep``)."""
