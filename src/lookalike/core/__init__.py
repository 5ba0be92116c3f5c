"""Core layer: errors, configuration, image decoding and catalog sources. Imports nothing else of lookalike,
and nothing heavier than NumPy and Pillow."""
