"""`moecli serve`: an OpenAI-compatible HTTP server on the plan (slots, prompt cache, checkpoints)."""
