"""Pure tensor code: pooling methods, heads and the task -> pooler dispatch."""
