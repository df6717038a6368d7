"""Cohort-level logic of the workflow, called by its rules through the CLI.

- `config`: config and sample-sheet validation against the workflow's JSON schemas
- `sharding`: the cost model and deterministic, cost-balanced shards
- `plan`: cohort de-duplication, the per-stage cache, shard files (`esmpipe shard`)
- `gather`: the proteins / embeddings / structures tables (`esmpipe gather`)
- `report`: counts and plots for the report (`esmpipe report-stats`)
- `query`: DuckDB views over a results folder (`esmpipe query`)
"""
