"""The demo service `make run` starts: an AI assistant over therapy session notes."""
