"""esmpipe: screen metagenome proteins with ESM-2 and ESMFold at cohort scale."""

__version__ = "0.1.0"
