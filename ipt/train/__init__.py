"""The trainer: mesh and sharding rules, optimizer, step, loop, Orbax checkpoints, metrics, AOT compiles."""
