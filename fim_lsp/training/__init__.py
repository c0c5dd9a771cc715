"""Training the bundled default model, and the checkpoint kit that writes random-weight checkpoints."""
