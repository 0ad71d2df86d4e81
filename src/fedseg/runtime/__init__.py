"""Runtimes: the in-process simulation (default) and, later, Flower."""
