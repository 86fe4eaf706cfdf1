"""Command-line tools (index building, upload, shards, conversion); each is `python -m concurrent_dataloader.tools.<name>`."""
