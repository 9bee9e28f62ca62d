"""Runs inside the SLURM jobs, in the training environment: verl's entrypoints, their patches, the deadline, doctor."""
