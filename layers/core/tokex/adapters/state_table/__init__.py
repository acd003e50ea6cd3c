"""The state table: its schema (schema.py) and the readers and writers of each record
kind: admission (single use and the rate limit), introspection clients, revocations."""
