"""A user's captures and photo folders turned into samples (docs/data.md)."""
