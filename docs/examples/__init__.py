"""Example code the documentation shows; tested, not shipped in the retryd package."""
