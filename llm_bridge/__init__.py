"""llm_bridge: one team.yaml, validated, rendered into every SLURM script of the recipe."""

__version__ = "0.1.0"
