"""Fact sentences about images: the file they live in and the writers that make them."""
