"""A reverse proxy in front of the emulator: counts AWS calls and adds latency per call.

`python -m bench.proxy --upstream URL --port N [--delay-ms 15]` serves until killed.
`GET /__bench/stats` answers the counts so far (by operation, and per queue URL);
`POST /__bench/reset` zeroes them. Each call waits `delay-ms` before it is
forwarded, which is roughly what a client in the same region sees from SQS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from urllib.parse import parse_qs

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def operation_of(request: web.Request, body: bytes) -> tuple[str, str | None]:
    """(operation, queue URL or None) of one AWS call, whichever protocol it speaks."""
    target = request.headers.get("X-Amz-Target")
    queue: str | None = None
    if target:
        # JSON protocols: "AmazonSQS.ReceiveMessage", "AWSStepFunctions.StartExecution".
        operation = target.rsplit(".", 1)[-1]
        try:
            document = json.loads(body or b"{}")
        except ValueError:
            document = {}
        if isinstance(document, dict) and isinstance(document.get("QueueUrl"), str):
            queue = document["QueueUrl"]
        return operation, queue
    if body and b"Action=" in body:
        form = parse_qs(body.decode("utf-8", "replace"))
        action = form.get("Action", ["?"])[0]
        queue = form.get("QueueUrl", [None])[0]
        return action, queue
    # REST protocols (Lambda): the method and the path's leading words.
    words = [w for w in request.path.split("/") if w][:3]
    return f"{request.method} /{'/'.join(words[:1] + (['...'] if len(words) > 1 else []))}", None


def build_app(upstream: str, delay_s: float) -> web.Application:
    calls: Counter[str] = Counter()
    per_queue: Counter[str] = Counter()
    state: dict[str, aiohttp.ClientSession] = {}

    async def on_startup(_app: web.Application) -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )

    async def on_cleanup(_app: web.Application) -> None:
        await state["session"].close()

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response({"calls": dict(calls), "per_queue": dict(per_queue)})

    async def reset(_request: web.Request) -> web.Response:
        calls.clear()
        per_queue.clear()
        return web.json_response({})

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        operation, queue = operation_of(request, body)
        calls[operation] += 1
        if queue:
            per_queue[queue.rsplit("/", 1)[-1]] += 1
        if delay_s:
            await asyncio.sleep(delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with state["session"].request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=answer.status, body=payload, headers=out_headers)

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/__bench/stats", stats)
    app.router.add_post("/__bench/reset", reset)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args()
    web.run_app(
        build_app(args.upstream.rstrip("/"), args.delay_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
