"""Data: one module per source format (`kinds/`), then rendering, tokenizing, caching, batching, reporting."""
