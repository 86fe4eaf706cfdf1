"""Import paths of the original project (``concurrent_dataloader.dataloader_mod.*``): re-exports only."""
