"""Thin Typer commands: each declares its flags and hands them (its locals) to `_run.execute`."""
