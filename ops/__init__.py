"""Operations: the local stack, Flower config, metrics exporter and benchmarks."""
