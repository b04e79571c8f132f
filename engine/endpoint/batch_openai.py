"""OpenAI's Batch API on the wire: a JSONL file uploaded to ``/files``, a batch made of it, its output files.

One line per request: ``{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}``, the
body exactly what the online route sends (built by :mod:`engine.endpoint.apis`), so a batch answer
is read by the same adapter. One model per file, at most 50,000 lines and 200 MB
(https://platform.openai.com/docs/api-reference/batch/create). A batch goes validating →
in_progress → finalizing → completed, or ends failed, expired or cancelled; answered requests are
in ``output_file_id``, failed ones (and, when a batch expires or is cancelled, the ones never run,
with code ``batch_expired``/``batch_cancelled``) in ``error_file_id``.

Each upload is named after its chunk, and each batch carries the chunk in its metadata, so a run
killed between sending the request and recording the answer finds what it made (:meth:`find_file`,
:meth:`find_batch`) rather than paying for it twice.

Usage::

    wire = OpenAIBatch(http)
    file_id = await wire.upload(data, "engine-run-c0001.jsonl")
    batch_id = await wire.create(file_id, "/v1/chat/completions", {"engine_chunk": "c0001"})
    status = await wire.retrieve(batch_id)
    for item in wire.results(await wire.download(status.downloads[0])): ...
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from engine.endpoint.batch import BatchHttp, BatchStatus, ItemResult, error_text
from engine.errors import EndpointError

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "OpenAIBatch"]

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_RETRYABLE = frozenset({408, 409, 429})
_NOT_RUN = {"batch_expired": "expired", "batch_cancelled": "cancelled"}


class OpenAIBatch:
    """OpenAI's files and batches endpoints for one endpoint and key. Usage: see the module docstring."""

    needs_upload = True

    def __init__(self, http: BatchHttp) -> None:
        self.http = http

    @staticmethod
    def line(custom_id: str, body: bytes, url: str) -> bytes:
        """One request line of the input file (no trailing newline)."""
        return b'{"custom_id":"%s","method":"POST","url":"/v1%s","body":%s}' % (custom_id.encode(), url.encode(), body)

    @staticmethod
    def payload(lines: list[bytes]) -> bytes:
        """The input file: the lines, one per line."""
        return b"".join(line + b"\n" for line in lines)

    async def upload(self, data: bytes, filename: str) -> str:
        """Upload an input file with purpose ``batch``; returns its file id."""
        boundary = "engine" + secrets.token_hex(12)
        body = _multipart(boundary, {"purpose": b"batch"}, ("file", filename, data))
        response = await self.http.call("POST", "/files", body=body, step="upload",
                                         content_type=f"multipart/form-data; boundary={boundary}")
        return _field(response.body, "id", "upload")

    async def find_file(self, filename: str) -> str | None:
        """The id of an uploaded batch file of this name (the newest), or None."""
        response = await self.http.call("GET", "/files?purpose=batch", step="list files")
        found = [f for f in _data(response.body) if f.get("filename") == filename]
        found.sort(key=lambda f: f.get("created_at") or 0)
        return str(found[-1]["id"]) if found else None

    async def create(self, file_id: str, url: str, metadata: Mapping[str, str]) -> str:
        """Create a batch of an uploaded file for one endpoint (``/chat/completions``); returns its id."""
        body = orjson.dumps({"input_file_id": file_id, "endpoint": f"/v1{url}", "completion_window": "24h",
                             "metadata": dict(metadata)})
        response = await self.http.call("POST", "/batches", body=body, step="create")
        return _field(response.body, "id", "create")

    async def find_batch(self, file_id: str, metadata: Mapping[str, str]) -> str | None:
        """The id of a batch made of ``file_id`` carrying ``metadata``, or None (looks at the 100 newest)."""
        response = await self.http.call("GET", "/batches?limit=100", step="list batches")
        for batch in _data(response.body):
            meta = batch.get("metadata") or {}
            if batch.get("input_file_id") == file_id and all(meta.get(k) == v for k, v in metadata.items()):
                return str(batch["id"])
        return None

    async def retrieve(self, batch_id: str) -> BatchStatus:
        response = await self.http.call("GET", f"/batches/{batch_id}", step="retrieve")
        return _status(response.body)

    async def cancel(self, batch_id: str) -> BatchStatus:
        response = await self.http.call("POST", f"/batches/{batch_id}/cancel", step="cancel")
        return _status(response.body)

    async def download(self, file_id: str) -> bytes:
        """One output or error file's content."""
        response = await self.http.call("GET", f"/files/{file_id}/content", step="download")
        return response.body

    @staticmethod
    def results(data: bytes) -> Iterator[ItemResult]:
        """Each line of an output or error file as an ItemResult; a line that is not a result is skipped."""
        for raw in data.splitlines():
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
                custom_id = str(line["custom_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
            yield _item(custom_id, line.get("response"), line.get("error"))


def _item(custom_id: str, response: Any, error: Any) -> ItemResult:
    if isinstance(response, dict) and response.get("status_code") is not None:
        status = int(response["status_code"])
        body = orjson.dumps(response.get("body"))
        if status == 200:
            return ItemResult(custom_id=custom_id, body=body, status=200)
        detail = error_text(body)
        return ItemResult(custom_id=custom_id, body=None, status=status, error=f"http {status} {detail}".strip(),
                          retry=status in _RETRYABLE or status >= 500)
    code = str(error.get("code") or "") if isinstance(error, dict) else ""
    message = str(error.get("message") or "")[:120] if isinstance(error, dict) else ""
    if code in _NOT_RUN:
        return ItemResult(custom_id=custom_id, body=None, error=_NOT_RUN[code], retry=True)
    return ItemResult(custom_id=custom_id, body=None, error=f"batch error {code or message or 'with no reason given'}",
                      retry=False)


def _status(body: bytes) -> BatchStatus:
    try:
        batch = orjson.loads(body)
        state = str(batch["status"])
        batch_id = str(batch["id"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise EndpointError(f"a batch reply is not a batch object ({exc})") from exc
    downloads = tuple(str(batch[k]) for k in ("output_file_id", "error_file_id") if batch.get(k))
    failure = None
    if state == "failed":
        errors = (batch.get("errors") or {}).get("data") or [{}]
        first = errors[0] if isinstance(errors[0], dict) else {}
        failure = f"batch failed: {first.get('code') or first.get('message') or 'no reason given'}"[:160]
    counts = batch.get("request_counts") or {}
    return BatchStatus(id=batch_id, state=state, ended=state in _ENDED, counts=dict(counts),
                       downloads=downloads, failure=failure)


def _field(body: bytes, name: str, step: str) -> str:
    try:
        return str(orjson.loads(body)[name])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise EndpointError(f"batch {step}: the reply has no {name!r}") from exc


def _data(body: bytes) -> list[dict[str, Any]]:
    try:
        data = orjson.loads(body).get("data") or []
    except (orjson.JSONDecodeError, AttributeError):
        return []
    return [d for d in data if isinstance(d, dict)]


def _multipart(boundary: str, fields: Mapping[str, bytes], file: tuple[str, str, bytes]) -> bytes:
    """A multipart/form-data body: the plain fields, then one file part."""
    mark = b"--" + boundary.encode()
    parts = [mark + b'\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n' % (k.encode(), v)
             for k, v in fields.items()]
    name, filename, data = file
    parts.append(mark + b'\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n'
                 b"Content-Type: application/jsonl\r\n\r\n" % (name.encode(), filename.encode()) + data + b"\r\n")
    return b"".join(parts) + mark + b"--\r\n"
