"""Ray Data graphs, readers, the shard writer, configuration and the ``pairmine`` CLI."""
