"""Searched against random and the paper's architecture under one retraining budget (issue 19)."""
