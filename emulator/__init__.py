"""A WaveSpeed-compatible HTTP server (tornado + Pillow) for tests, demos and load tests."""
