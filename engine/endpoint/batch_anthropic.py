"""Anthropic's Message Batches on the wire: one ``POST /messages/batches`` of requests, polled, results as JSONL.

Each request is ``{"custom_id", "params"}``, the params exactly the body the online route sends
(built by :mod:`engine.endpoint.apis`), so a result's message is read by the same adapter. At most
100,000 requests and 256 MB per batch
(https://platform.claude.com/docs/en/build-with-claude/batch-processing). A batch is ``in_progress``
until ``ended``; each result is ``succeeded`` (with the message), ``errored``, ``canceled`` or
``expired``. There is no upload step: the requests travel in the create call.

The results are fetched from ``{base_url}/messages/batches/{id}/results``, never from the
``results_url`` the reply names: following a URL from a reply could send the key to another host.

Usage::

    wire = AnthropicBatch(http)
    batch_id = await wire.create(wire.payload(lines))
    status = await wire.retrieve(batch_id)
    for item in wire.results(await wire.download(batch_id)): ...
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from engine.endpoint.batch import BatchHttp, BatchStatus, ItemResult
from engine.errors import EndpointError

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "AnthropicBatch"]

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
_RETRYABLE = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})


class AnthropicBatch:
    """Anthropic's Message Batches endpoints for one endpoint and key. Usage: see the module docstring."""

    needs_upload = False

    def __init__(self, http: BatchHttp) -> None:
        self.http = http

    @staticmethod
    def line(custom_id: str, body: bytes, url: str) -> bytes:
        """One request of the batch (``url`` is unused: Message Batches take Messages requests only)."""
        return b'{"custom_id":"%s","params":%s}' % (custom_id.encode(), body)

    @staticmethod
    def payload(lines: list[bytes]) -> bytes:
        """The create call's body."""
        return b'{"requests":[' + b",".join(lines) + b"]}"

    async def create(self, data: bytes) -> str:
        response = await self.http.call("POST", "/messages/batches", body=data, step="create")
        try:
            return str(orjson.loads(response.body)["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise EndpointError("batch create: the reply has no 'id'") from exc

    async def retrieve(self, batch_id: str) -> BatchStatus:
        response = await self.http.call("GET", f"/messages/batches/{batch_id}", step="retrieve")
        return _status(response.body)

    async def cancel(self, batch_id: str) -> BatchStatus:
        response = await self.http.call("POST", f"/messages/batches/{batch_id}/cancel", step="cancel")
        return _status(response.body)

    async def download(self, batch_id: str) -> bytes:
        response = await self.http.call("GET", f"/messages/batches/{batch_id}/results", step="download")
        return response.body

    @staticmethod
    def results(data: bytes) -> Iterator[ItemResult]:
        """Each result line as an ItemResult; a line that is not a result is skipped."""
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                custom_id = str(line["custom_id"])
                result = line["result"]
                kind = result["type"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            if kind == "succeeded":
                yield ItemResult(custom_id=custom_id, body=orjson.dumps(result.get("message")), status=200)
            elif kind == "errored":
                error = (result.get("error") or {}).get("error") or {}
                etype = str(error.get("type") or "error")
                yield ItemResult(custom_id=custom_id, body=None, error=f"errored {etype}", retry=etype in _RETRYABLE)
            else:  # canceled, expired: never run
                yield ItemResult(custom_id=custom_id, body=None, error=str(kind), retry=True)


def _status(body: bytes) -> BatchStatus:
    try:
        batch = orjson.loads(body)
        state = str(batch["processing_status"])
        batch_id = str(batch["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise EndpointError(f"a batch reply is not a message batch ({exc})") from exc
    ended = state == "ended"
    return BatchStatus(id=batch_id, state=state, ended=ended, counts=dict(batch.get("request_counts") or {}),
                       downloads=(batch_id,) if ended else ())
