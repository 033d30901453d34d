"""Streaming readers with per-row error capture, Arrow schemas, and atomic writers."""
