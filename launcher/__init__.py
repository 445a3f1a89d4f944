"""How a job is started: the `dist-train` CLI, local and multi-node workers
through torch's elastic launcher, and (later) SLURM. The launcher only
translates "how was I started" into torch's environment."""
