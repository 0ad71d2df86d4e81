"""Datasets: the embedded synthetic generator and readers of real multi-site folders."""
