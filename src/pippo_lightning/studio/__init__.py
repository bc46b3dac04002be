"""The synthetic studio: procedural subjects rendered in a calibrated camera dome."""
