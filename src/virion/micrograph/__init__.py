"""Whole micrographs: reading them at full resolution, cutting crops from annotations, scanning them.

A micrograph is not a crop: it is read at its own size and pixel size (no resize), and code here
works in pixels of the micrograph as given and in nanometres, never in the 128-px model input.
"""
