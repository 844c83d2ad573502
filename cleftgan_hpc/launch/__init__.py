"""Backends decide where stages run; they never change what a stage does."""
