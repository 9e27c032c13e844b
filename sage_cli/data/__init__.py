"""Datasets: typed records, the readers for each layout, masks, and synthetic defects."""
