"""Serving trained models: `mixtune serve` (an OpenAI-compatible HTTP API with request batching) and
`mixtune chat` (a terminal chat). See docs/serving.md."""
