"""Candidate operations and heads, 2D/3D: the primitives table (name → factory), ASPP and the DeepLabv3+
decoder."""
