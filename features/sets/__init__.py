"""Concrete feature sets, one module per versioned set."""
