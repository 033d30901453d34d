"""Drivers: what runs an engine. `local` (the command line: parts, commits, stdout), `api` (Python calls)."""
