"""Kafka I/O: the embedded broker, the source that assigns every partition and cuts batches, the
dead-letter sink, and the producer `pegp-stream produce` uses."""
