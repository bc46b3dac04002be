"""The checkpoint format: safe weights-only loading, checkpoint files, reading, original weights
and the one atomic writer (docs/architecture.md)."""
