"""How to ask one endpoint: the transport, when to retry, how fast to send, the chat client.

Data flow: :class:`~engine.endpoint.client.ChatClient` takes a slot from the limiter
(:mod:`.limits`), sends through the transport (:mod:`.transport`), retries as the policy says
(:mod:`.retry`) and returns a ``Completion``; each API (Chat Completions, Responses, Anthropic
Messages) is a thin adapter in :mod:`.apis`. Knows nothing of specs or logs.
Usage: ``await ChatClient(...).complete(model="m", messages=[...], temperature=0.0, max_tokens=32)``
"""
