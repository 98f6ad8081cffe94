"""The NATS adapter: the only package that imports ``nats``."""
