"""Thin Typer commands: parse options, build the run config, call the engine."""
