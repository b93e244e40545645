"""The worker processes: arq workers reading a queue's job stream through a consumer group."""
