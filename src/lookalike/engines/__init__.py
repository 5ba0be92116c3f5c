"""Engines layer: what turns image files into vectors. ``embed.Encoder`` runs on this machine (PyTorch for
network models, NumPy for the model-free ones); engines only use models and core."""
