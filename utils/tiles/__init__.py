"""Tile triplets as records: cutting them from slides or from folders of
labelled tiles (``extract``, ``tile_folders``, ``batch``), the record format
and its ``tf.data`` reader with the augmentations it applies (``records``,
``record_offsets``, ``augment``, ``randaugment``, ``stain_jitter``), the
summaries one stage leaves for the next and what made them (``summaries``,
``provenance``), and synthetic slides and shards for tests, the demo and the
benchmarks (``synthetic``). It may import ``utils.common`` and ``utils.slides``."""
