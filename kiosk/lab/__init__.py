"""Measuring code: benchmark, evaluation, metrics, plots, the demo and simulated liveness clips.

The door loop never imports it.
"""
