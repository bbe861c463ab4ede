"""Running the stages: one archive end to end (the worker), a day's plan, the Slurm and local executors."""
