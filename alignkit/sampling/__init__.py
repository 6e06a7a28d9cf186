"""alignkit sample: generate candidates for prompts, score them, select training rows."""
