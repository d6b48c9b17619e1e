"""Training from scratch: presets/config, the trainer loop, atomic checkpoints, torchrun scale-out."""
