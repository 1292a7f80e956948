"""The shared core: what every layer above uses, importing nothing else of the project.

crops (the 9-crop set, the low-res view, RTR), protocol (the GET_CROPS tool call), tokens (the
family-independent 2-turn token layout), images (safe image loading), engine (the generation
engine interface), episode (the rollout -> reward -> learner record), sample and trajectory (the
data records), config_io (typed YAML configs) and run_paths (the run-directory layout).
"""
