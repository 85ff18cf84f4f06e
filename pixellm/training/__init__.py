"""Training: DeepSpeed set-up, checkpoints, logging and the step function used by train.py."""
