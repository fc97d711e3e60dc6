"""visionflow's building blocks: plain, typed Python (no Prefect import, no CLI, no globals)."""
