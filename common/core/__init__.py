"""What every layer stands on: errors, atomic files, configs, registries, the runtime (seeds,
devices, AMP, threads) and torchrun's process group. Imports nothing else of common."""
