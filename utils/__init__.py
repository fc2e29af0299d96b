"""Shared building blocks of the three scripts: configuration, slide access,
tile geometry, tissue masks, annotations, records, model, active learning and
inference. Scripts stay thin and call into here, so that extraction and
inference cut tiles with exactly the same code."""
