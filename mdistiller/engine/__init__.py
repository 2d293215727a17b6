"""Training engine: distributed setup, resumable sampler, checkpoints, optimisation, logging, the trainer loop."""
