"""Data: splits, epoch samplers and loaders, the image cache, mixup and CutMix, batches of any
structure, ranking. Imports only common.core."""
