"""Device-side metric accumulators, gradient noise scale, MetricsStream and its sinks."""
