"""The built-in target's Batch APIs (part of :mod:`engine.sim`): OpenAI's files and batches, Anthropic's Message Batches.

Enough of both for the engine's batch route to be tested with no network: uploads, batches that
finish ``batch_delay_s`` after they were made, output and error files (OpenAI) or a results stream
(Anthropic), cancellation, per-request errors at ``batch_error_rate``, and the batches named in
``batch_expire`` (by the order they were made, 1 first) expiring with half their requests answered.
Each request is answered as the online route answers it (the server's ``answer_item``: same models,
same answers), without faults, quotas or latency. The counts (uploads, batches made) let tests check
that a killed run never uploads or creates twice.

Usage (what :class:`engine.sim.server.SimServer` does)::

    store = BatchStore(config, loop, server.answer_item)
    status, payload = store.handle(b"POST", b"/v1/batches", b"", body)
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson

from engine.sim.config import SimConfig

__all__ = ["BATCH_PREFIXES", "BatchStore"]

BATCH_PREFIXES = (b"/v1/files", b"/v1/batches", b"/v1/messages/batches")
Answer = Callable[[bytes, Any], tuple[int, bytes]]
# (status, JSON or JSONL payload, content type) | (status, message, error kind) for an error
Handled = tuple[int, bytes, bytes]


class BatchStore:
    """Files and batches of both APIs, in memory, with their counters. Usage: see the module docstring."""

    def __init__(self, config: SimConfig, loop: asyncio.AbstractEventLoop, answer: Answer) -> None:
        self.config = config
        self.loop = loop
        self.answer = answer
        self.rng = random.Random(config.seed + 7919)  # its own stream: online answers stay as they were
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()

    def stats(self) -> dict[str, Any]:
        """``uploads``, ``created`` (batches made), by API, and what went wrong on purpose."""
        return dict(self.counts)

    def handle(self, method: bytes, path: bytes, query: bytes, body: bytes) -> Handled:
        """Route one request under /v1/files, /v1/batches or /v1/messages/batches."""
        parts = path.decode(errors="replace").strip("/").split("/")[1:]  # without "v1"
        try:
            if parts[0] == "messages":
                return self._anthropic(method, parts[2:], body)
            if parts[0] == "files":
                return self._files(method, parts[1:], query, body)
            return self._openai(method, parts[1:], body)
        except _Refused as exc:
            return exc.status, exc.message.encode(), b"error"

    # -- OpenAI files ------------------------------------------------------------------------

    def _files(self, method: bytes, rest: list[str], query: bytes, body: bytes) -> Handled:
        if method == b"POST" and not rest:
            fields = _multipart(body)
            if fields.get("purpose") != b"batch" or "file" not in fields:
                raise _Refused(400, "a batch upload needs purpose=batch and a file part")
            file_id = f"file-sim{len(self.files) + 1}"
            self.counts["uploads"] += 1
            self.contents[file_id] = fields["file"]
            self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(fields["file"]),
                                   "created_at": int(time.time()), "filename": fields.get("filename", b"").decode(),
                                   "purpose": "batch", "status": "processed"}
            return _json(self.files[file_id])
        if method == b"GET" and not rest:
            return _json({"object": "list", "data": list(self.files.values()), "has_more": False})
        if method == b"GET" and len(rest) == 2 and rest[1] == "content" and rest[0] in self.contents:
            return 200, self.contents[rest[0]], b"application/jsonl"
        raise _Refused(404, f"No such file: {'/'.join(rest)}")

    # -- OpenAI batches ----------------------------------------------------------------------

    def _openai(self, method: bytes, rest: list[str], body: bytes) -> Handled:
        if method == b"POST" and not rest:
            return _json(self._create_openai(_object(body)))
        if method == b"GET" and not rest:
            listed = sorted(self.batches.values(), key=lambda b: -b["seq"])
            return _json({"object": "list", "data": [self._openai_view(b) for b in listed if b["kind"] == "openai"],
                          "has_more": False})
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None or batch["kind"] != "openai":
            raise _Refused(404, f"No batch found with id '{rest[0] if rest else ''}'")
        if method == b"POST" and rest[1:] == ["cancel"]:
            batch["cancelled"] = True
        elif not (method == b"GET" and len(rest) == 1):
            raise _Refused(404, "Invalid URL")
        return _json(self._openai_view(batch))

    def _create_openai(self, request: dict[str, Any]) -> dict[str, Any]:
        file_id, endpoint = request.get("input_file_id"), request.get("endpoint")
        if file_id not in self.contents:
            raise _Refused(400, f"No such File object: {file_id}")
        if request.get("completion_window") != "24h":
            raise _Refused(400, "completion_window must be 24h")
        items, problem = [], None
        for number, raw in enumerate(self.contents[file_id].splitlines(), 1):
            line = _object(raw) if raw.strip() else {}
            if line.get("url") != endpoint or line.get("method") != "POST" or "custom_id" not in line:
                problem = f"line {number}: needs custom_id, method POST and url {endpoint}"
                break
            items.append((str(line["custom_id"]), line.get("body")))
        if problem is None and len({c for c, _ in items}) != len(items):
            problem = "duplicate custom_id"
        if problem is None and len({(b or {}).get("model") for _, b in items}) > 1:
            problem = "a batch file holds requests for one model only"
        batch = self._new("openai", items, str(endpoint).encode(), file_id=file_id)
        batch["failure"] = problem
        batch["metadata"] = request.get("metadata") or {}
        return self._openai_view(batch)

    def _openai_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._advance(batch)
        state = batch["state"]
        status = {"running": "in_progress", "failed": "failed"}.get(state, state)
        if batch["cancelled"] and state == "running":
            status = "cancelling"
        done = batch.get("results") or []
        ok = sum(1 for r in done if r[1] == "ok")
        return {
            "id": batch["id"], "object": "batch", "endpoint": batch["url"].decode(),
            "errors": {"object": "list", "data": [{"code": "invalid_request", "message": batch["failure"]}]}
            if batch["failure"] else None,
            "input_file_id": batch["file_id"], "completion_window": "24h", "status": status,
            "output_file_id": batch.get("output_file_id"), "error_file_id": batch.get("error_file_id"),
            "created_at": batch["created_wall"], "in_progress_at": batch["created_wall"],
            "expires_at": batch["created_wall"] + 86400, "completed_at": batch.get("ended_wall"),
            "request_counts": {"total": len(batch["items"]), "completed": ok, "failed": len(done) - ok},
            "metadata": batch["metadata"],
        }  # fmt: skip

    # -- Anthropic Message Batches -----------------------------------------------------------

    def _anthropic(self, method: bytes, rest: list[str], body: bytes) -> Handled:
        if method == b"POST" and not rest:
            requests = _object(body).get("requests")
            if not isinstance(requests, list) or not requests:
                raise _Refused(400, "requests: at least one request is required")
            items = [(str(r.get("custom_id")), r.get("params")) for r in requests if isinstance(r, dict)]
            if len({c for c, _ in items}) != len(items):
                raise _Refused(400, "requests: custom_id values must be unique")
            return _json(self._anthropic_view(self._new("anthropic", items, b"/v1/messages")))
        batch = self.batches.get(rest[0]) if rest else None
        if batch is None or batch["kind"] != "anthropic":
            raise _Refused(404, "message batch not found")
        if method == b"POST" and rest[1:] == ["cancel"]:
            batch["cancelled"] = True
        elif method == b"GET" and rest[1:] == ["results"]:
            self._advance(batch)
            if batch["state"] == "running":
                raise _Refused(400, f"Message Batch {batch['id']} has not yet ended; its results are not available")
            return 200, b"".join(orjson.dumps(_anthropic_line(r)) + b"\n" for r in batch["results"]), b"application/jsonl"
        elif not (method == b"GET" and len(rest) == 1):
            raise _Refused(404, "Invalid URL")
        return _json(self._anthropic_view(batch))

    def _anthropic_view(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._advance(batch)
        running = batch["state"] == "running"
        done = Counter(r[1] for r in batch.get("results") or [])
        counts = {"processing": len(batch["items"]) if running else 0, "succeeded": done["ok"],
                  "errored": done["errored"] + done["refused"], "canceled": done["cancelled"],
                  "expired": done["expired"]}
        ended = None if running else _rfc3339(batch["ended_wall"])
        return {
            "id": batch["id"], "type": "message_batch",
            "processing_status": ("canceling" if batch["cancelled"] else "in_progress") if running else "ended",
            "request_counts": counts, "ended_at": ended, "created_at": _rfc3339(batch["created_wall"]),
            "expires_at": _rfc3339(batch["created_wall"] + 86400), "archived_at": None,
            "cancel_initiated_at": _rfc3339(batch["created_wall"]) if batch["cancelled"] else None,
            "results_url": None if running else f"/v1/messages/batches/{batch['id']}/results",
        }  # fmt: skip

    # -- both --------------------------------------------------------------------------------

    def _new(self, kind: str, items: list[tuple[str, Any]], url: bytes, *, file_id: str | None = None) -> dict[str, Any]:
        self.counts["created"] += 1
        self.counts[f"created_{kind}"] += 1
        seq = self.counts["created"]
        batch_id = f"batch_sim{seq}" if kind == "openai" else f"msgbatch_sim{seq}"
        batch = {"id": batch_id, "kind": kind, "seq": seq, "items": items, "url": url, "file_id": file_id,
                 "created": self.loop.time(), "created_wall": int(time.time()), "state": "running",
                 "cancelled": False, "failure": None, "metadata": {}}
        self.batches[batch_id] = batch
        return batch

    def _advance(self, batch: dict[str, Any]) -> None:
        """Finish a batch whose time has come (or that was cancelled): answer it all at once."""
        if batch["state"] != "running":
            return
        if batch["failure"]:
            batch["state"], batch["ended_wall"] = "failed", int(time.time())
            return
        if not batch["cancelled"] and self.loop.time() < batch["created"] + self.config.batch_delay_s:
            return
        expire = batch["seq"] in self.config.batch_expire
        results: list[tuple[str, str, int, bytes]] = []  # (custom_id, outcome, status, body)
        for n, (custom_id, request) in enumerate(batch["items"]):
            if batch["cancelled"]:
                results.append((custom_id, "cancelled", 0, b""))
            elif expire and n >= len(batch["items"]) // 2:
                results.append((custom_id, "expired", 0, b""))
            elif self.rng.random() < self.config.batch_error_rate:
                self.counts["errored_items"] += 1
                results.append((custom_id, "errored", 500, b""))
            else:
                status, body = self.answer(batch["url"], request)
                results.append((custom_id, "ok" if status == 200 else "refused", status, body))
        self.counts["expired"] += expire and not batch["cancelled"]
        batch["results"] = results
        batch["state"] = "cancelled" if batch["cancelled"] else "expired" if expire else "completed"
        batch["ended_wall"] = int(time.time())
        if batch["kind"] == "openai":
            self._openai_files(batch, results)

    def _openai_files(self, batch: dict[str, Any], results: list[tuple[str, str, int, bytes]]) -> None:
        out = [_openai_line(batch["id"], r) for r in results if r[1] == "ok"]
        err = [_openai_line(batch["id"], r) for r in results if r[1] != "ok"]
        for key, lines in (("output_file_id", out), ("error_file_id", err)):
            if lines:
                file_id = f"file-sim{len(self.files) + 1}"
                self.contents[file_id] = b"".join(line + b"\n" for line in lines)
                self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(self.contents[file_id]),
                                       "created_at": int(time.time()), "filename": f"{batch['id']}_{key}.jsonl",
                                       "purpose": "batch_output", "status": "processed"}
                batch[key] = file_id


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any) -> Handled:
    return 200, orjson.dumps(data), b"application/json"


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _Refused(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(data, dict):
        raise _Refused(400, "The request body must be a JSON object.")
    return data


def _openai_line(batch_id: str, result: tuple[str, str, int, bytes]) -> bytes:
    custom_id, outcome, status, body = result
    line: dict[str, Any] = {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": None, "error": None}
    if outcome in ("ok", "refused"):
        payload = orjson.loads(body) if outcome == "ok" else {
            "error": {"message": body.decode(errors="replace"), "type": "invalid_request_error", "code": None}}
        line["response"] = {"status_code": status, "request_id": f"req_{custom_id}", "body": payload}
    elif outcome == "errored":
        line["response"] = {"status_code": 500, "request_id": f"req_{custom_id}", "body": {"error": {
            "message": "The server had an error processing your request (engine-sim batch).",
            "type": "server_error", "code": "server_error"}}}
    else:
        line["error"] = {"code": f"batch_{outcome}", "message": f"This request could not be executed before the "
                         f"batch was {outcome}."}
    return orjson.dumps(line)


def _anthropic_line(result: tuple[str, str, int, bytes]) -> dict[str, Any]:
    custom_id, outcome, _, body = result
    if outcome == "ok":
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": orjson.loads(body)}}
    if outcome in ("errored", "refused"):
        kind = "api_error" if outcome == "errored" else "invalid_request_error"
        message = "Internal server error (engine-sim batch)" if outcome == "errored" else body.decode(errors="replace")
        return {"custom_id": custom_id, "result": {"type": "errored", "error": {
            "type": "error", "error": {"type": kind, "message": message}}}}
    return {"custom_id": custom_id, "result": {"type": "canceled" if outcome == "cancelled" else outcome}}


def _rfc3339(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _multipart(body: bytes) -> dict[str, bytes]:
    """The fields of a multipart/form-data body (the boundary read from its first line); the file part's
    content under its field name, its file name under ``filename``."""
    first, _, _ = body.partition(b"\r\n")
    if not first.startswith(b"--"):
        raise _Refused(400, "expected a multipart/form-data body")
    fields: dict[str, bytes] = {}
    for part in body.split(first)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        disposition = next((h for h in head.split(b"\r\n") if h.lower().startswith(b"content-disposition")), b"")
        attrs = dict(_attr(a) for a in disposition.split(b";")[1:])
        name = attrs.get(b"name", b"").decode()
        fields[name] = content.removesuffix(b"\r\n")
        if b"filename" in attrs:
            fields["filename"] = attrs[b"filename"]
    return fields


def _attr(text: bytes) -> tuple[bytes, bytes]:
    key, _, value = text.strip().partition(b"=")
    return key, value.strip(b'"')
