"""MITI 4.2.1: codebook, scoring, reliability, coders, annotation tool."""
