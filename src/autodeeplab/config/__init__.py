"""Typed settings: YAML files, ``--set`` overrides, presets, and the schema that coerces and names keys."""
