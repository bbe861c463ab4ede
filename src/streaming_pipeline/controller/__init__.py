"""The controller: what decides and submits the work of days (the day plan, Slurm arrays or the
local executor, the finalize step), apart from what runs inside a job (`run/`)."""
