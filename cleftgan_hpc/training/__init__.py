"""Training: the fine-tune stage's loop, losses, ADA and checkpoints."""
