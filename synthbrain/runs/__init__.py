"""The run layer: what every command that writes a run folder shares (issue 11).

`generate` holds the one sharded, resumable generate loop: shards (`--shard i/N` or Slurm's
`SLURM_ARRAY_*`), resume (finished samples are skipped, a killed writer's temp files removed by
the RunWriter), per-sample seeds (`rng.derive_seed(run seed, k)`), manifest and layouts (through
`io.runwriter.RunWriter`) and previews. The paired and deviation engines' `generate` and the
`phantom` command make their samples and hand them to it.
"""
