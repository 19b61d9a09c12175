"""Command-line interface: the only place that knows about argv, printing and exit codes."""
