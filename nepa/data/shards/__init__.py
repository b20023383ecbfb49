"""WebDataset shards: writing with a manifest, safe decoding, streaming with exact or resampled
epochs across ranks and workers, bad-data accounting and exact resume."""
