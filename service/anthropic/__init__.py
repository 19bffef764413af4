"""Anthropic's Messages API translated to and from OpenAI chat completions (pure functions)."""
