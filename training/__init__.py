"""Training: the erasers that consume the mined shards, their data path and the Ray Train job."""
