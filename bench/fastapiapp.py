"""The framework's own floor: a bare FastAPI app with one `async def` route answering what
/health/live answers, under the same uvicorn, worker count and container limits as Berth's
app. Berth's runtime (request id, access log, metrics, deadline, body and admission limits)
is measured against it. Run by bench/__main__.py."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}
