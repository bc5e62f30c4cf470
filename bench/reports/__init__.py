"""Reproduction reports: commands that train, evaluate and write a markdown report under docs/."""
