"""Operator tools: the CLI, the local cluster launcher, demo, load test, evaluation, ingest sources, chunking,
stub generation. Servers never import this package."""
