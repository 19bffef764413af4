"""Anthropic's Messages API spoken over chat completions: pure translation, no I/O.

``request`` checks a Messages request and turns it into a chat-completions body; ``answer``
turns a chat completion into a Messages answer; ``stream`` turns a chat-completions stream
into Anthropic's server-sent events.  Nothing here knows routes, providers or quotas.
"""
