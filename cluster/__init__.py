"""Ray cluster launch and job submission."""
