"""Rows in and tables out: readers (with per-row error capture), pair inputs, records, one table builder per task,
atomic part commits, stdout/error-file writers, and output-path safety. No model, no torch."""
