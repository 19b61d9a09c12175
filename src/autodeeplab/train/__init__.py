"""Retraining a found network from scratch: the loop and its settings."""
