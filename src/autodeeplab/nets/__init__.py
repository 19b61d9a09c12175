"""Found networks built from an architecture (2D/3D), the model file ``model.pt``, complexity counts."""
