"""Per-record and per-group work: pure functions on arrays and dicts, no Ray."""
