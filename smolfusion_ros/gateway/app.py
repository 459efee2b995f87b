"""The gateway's HTTP API (FastAPI) and the web console's static files.

Every endpoint is a thin translation to a ROS service or action call made by the backend
object (gateway_node): the gateway holds no model. Errors come back as JSON
{"error": "<message>"} with a 4xx/5xx status:

    400  a request the robot refused (bad session id, over the input limit, bad document ...)
    401  missing or wrong bearer token (when api_key is set)
    404  unknown session / persona / document / path
    405  wrong method          413  upload over max_upload_mb
    415  upload of a type the endpoint does not take
    422  malformed JSON body or missing/invalid fields
    503  fusion_node (or the node a call needs) absent, loading or busy; Retry-After set
    504  the robot did not answer in time
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, Protocol

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The console and the liveness probe stay reachable without a token: the page itself holds no
# data (it asks for the token and sends it on every API call), and /health is what a
# supervisor polls. Everything that reads or changes the robot's state needs the token.
OPEN_PATHS = ("/", "/health", "/static", "/favicon.ico")


class GatewayError(Exception):
    """An error with its HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class ChatBody(BaseModel):
    session_id: str = Field("", max_length=64, description="empty = 'default'")
    text: str = Field(..., min_length=1, description="the question")
    persona: str = Field("", max_length=64, description="empty = the session's persona")
    use_vision: str = Field("auto", pattern="^(|auto|always|never)$")
    max_tokens: int = Field(128, ge=1, le=8192)
    timeout_s: float = Field(0.0, ge=0.0, le=3600.0, description="0 = the robot's default")


class PersonaBody(BaseModel):
    persona_id: str = Field(..., min_length=1, max_length=64)
    name: str = Field("", max_length=64)
    language: str = Field("", max_length=16)
    system_prompt: str = Field(..., min_length=1)
    friendliness: int = Field(3, ge=1, le=5)
    knowledge: int = Field(3, ge=1, le=5)
    empathy: int = Field(3, ge=1, le=5)
    formality: int = Field(3, ge=1, le=5)
    replace: bool = False


class SearchBody(BaseModel):
    query: str = Field(..., min_length=1)
    persona: str = Field("", max_length=64)
    top_k: int = Field(3, ge=1, le=50)
    mode: str = Field("hybrid", pattern="^(hybrid|lexical|dense)$")


class Backend(Protocol):
    """What the app needs from gateway_node (all coroutines run on the server's loop)."""

    max_upload_bytes: int
    api_key: str

    async def chat(self, body: ChatBody) -> dict[str, Any]: ...
    def converse(self, body: ChatBody) -> Any: ...  # async iterator of SSE (event, data)
    async def analyze(self, image: bytes | None, content_type: str, prompt: str) -> dict: ...
    def scene(self) -> dict[str, Any]: ...
    async def scene_image(self) -> bytes | None: ...
    async def health(self) -> dict[str, Any]: ...
    async def sessions(self, limit: int, offset: int) -> dict[str, Any]: ...
    async def session(self, session_id: str, max_turns: int) -> dict[str, Any]: ...
    async def delete_session(self, session_id: str) -> dict[str, Any]: ...
    async def personas(self) -> dict[str, Any]: ...
    async def create_persona(self, body: PersonaBody) -> dict[str, Any]: ...
    async def delete_persona(self, persona_id: str) -> dict[str, Any]: ...
    async def ingest(self, persona: str, name: str, data: bytes) -> dict[str, Any]: ...
    async def documents(self, persona: str) -> dict[str, Any]: ...
    def ingest_progress(self, persona: str, name: str) -> dict[str, Any]: ...
    async def search(self, body: SearchBody) -> dict[str, Any]: ...
    async def clear_knowledge(self, persona: str, name: str) -> dict[str, Any]: ...


def _error(status: int, message: str, retry_after: float | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, int(retry_after)))} if retry_after else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    """The upload's bytes; 413 as soon as it is larger than `limit` (never read whole)."""
    chunks, size = [], 0
    while True:
        chunk = await upload.read(1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise GatewayError(
                413, f"{upload.filename or 'upload'} is over the limit of {limit / 1e6:.1f} MB"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _Limits:
    """Upload size and bearer token, checked before a request reaches its route.

    Plain ASGI middleware: starlette's @app.middleware("http") (BaseHTTPMiddleware) passes
    every request and every streamed event through an extra task and memory streams, about
    half a millisecond per request here, and a hand-over per server-sent event.
    """

    def __init__(self, app: Any, backend: Backend) -> None:
        self.app = app
        self.backend = backend

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope["path"], Headers(scope=scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, path: str, headers: Headers) -> JSONResponse | None:
        backend = self.backend
        # Refuse an oversized upload from its declared length before reading any of it
        # (multipart overhead is small against the limit; the body is re-checked as read).
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > backend.max_upload_bytes + 65536:
            return _error(
                413, f"request body over the limit of {backend.max_upload_bytes / 1e6:.1f} MB"
            )
        if backend.api_key and not (
            path in OPEN_PATHS or path.startswith("/static/") or path in ("/docs", "/openapi.json")
        ):
            given = headers.get("authorization", "")
            expected = f"Bearer {backend.api_key}"
            if not secrets.compare_digest(given.encode(), expected.encode()):
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <key>)")
        return None


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(
        title="smolfusion_ros gateway",
        description="HTTP access to the robot's conversation graph (a client of its ROS "
        "services and actions; no model runs here).",
        version="1.0",
    )

    @app.exception_handler(GatewayError)
    async def _gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for item in exc.errors():
            where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
            problems.append(f"{where}: {item.get('msg', 'invalid')}" if where else item["msg"])
        return _error(422, "; ".join(problems) or "malformed request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    app.add_middleware(_Limits, backend=backend)

    # ------------------------------------------------------------- console
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ---------------------------------------------------------------- chat
    @app.post("/chat", summary="Ask and get the whole answer (Chat.srv fields as JSON)")
    async def chat(body: ChatBody) -> dict[str, Any]:
        # Returned as a JSONResponse, the answer skips FastAPI's response validation and
        # re-encoding (the backend builds plain JSON types): this path must be fast.
        return JSONResponse(await backend.chat(body))  # type: ignore[return-value]

    @app.post(
        "/chat/stream",
        summary="Ask and stream the answer as server-sent events (converse action)",
        description="Events: 'start' (request accepted), 'token' (data: {delta, partial, "
        "tokens}) per token batch, then 'final' (the Converse result with timings) or "
        "'error'. Closing the connection cancels the goal.",
    )
    async def chat_stream(body: ChatBody, request: Request) -> StreamingResponse:
        events = backend.converse(body)
        first = await events.__anext__()  # errors before the stream starts keep their status

        async def stream():
            try:
                yield _sse(*first)
                async for event, data in events:
                    if await request.is_disconnected():
                        break
                    yield _sse(event, data)
            finally:
                await events.aclose()  # cancels the goal when the client went away

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post(
        "/analyze", summary="Ask the vision model about an uploaded image or the newest frame"
    )
    async def analyze(
        prompt: str = Form("Describe what you see."),
        image: UploadFile | None = File(None),
    ) -> dict[str, Any]:
        data, content_type = None, ""
        if image is not None and (image.filename or image.size):
            content_type = image.content_type or ""
            if content_type and not content_type.startswith("image/"):
                raise GatewayError(415, f"expected an image upload, got {content_type}")
            data = await _read_upload(image, backend.max_upload_bytes)
            if not data:
                raise GatewayError(400, "the uploaded image is empty")
        return await backend.analyze(data, content_type, prompt)

    # --------------------------------------------------------------- scene
    @app.get("/scene", summary="The latest SceneContext (what the robot currently sees)")
    async def scene() -> dict[str, Any]:
        return backend.scene()

    @app.get("/scene/image", summary="The latest debug image as JPEG")
    async def scene_image() -> Response:
        jpeg = await backend.scene_image()
        if jpeg is None:
            raise GatewayError(404, "no debug image has arrived yet")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/health", summary="Each node's readiness, model names, queue depth")
    async def health() -> JSONResponse:
        report = await backend.health()
        return JSONResponse(report, status_code=200 if report["ready"] else 503)

    # ------------------------------------------------------------ sessions
    @app.get("/sessions", summary="Stored conversations (memory_node)")
    async def sessions(limit: int = 100, offset: int = 0) -> dict[str, Any]:
        if not 0 <= limit <= 10000 or offset < 0:
            raise GatewayError(400, "limit must be 0..10000 and offset >= 0")
        return await backend.sessions(limit, offset)

    @app.get("/sessions/{session_id}", summary="A session's history")
    async def session(session_id: str, max_turns: int = 50) -> dict[str, Any]:
        if not 0 <= max_turns <= 100000:
            raise GatewayError(400, "max_turns must be 0..100000")
        return await backend.session(session_id, max_turns)

    @app.delete("/sessions/{session_id}", summary="Delete a session's turns")
    async def delete_session(session_id: str) -> dict[str, Any]:
        return await backend.delete_session(session_id)

    # ------------------------------------------------------------ personas
    @app.get("/personas", summary="Every persona (config ones first, then operator ones)")
    async def personas() -> dict[str, Any]:
        return await backend.personas()

    @app.post("/personas", summary="Create (or replace) an operator persona")
    async def create_persona(body: PersonaBody) -> dict[str, Any]:
        return await backend.create_persona(body)

    @app.delete("/personas/{persona_id}", summary="Delete an operator persona")
    async def delete_persona(persona_id: str) -> dict[str, Any]:
        return await backend.delete_persona(persona_id)

    # ----------------------------------------------------------- knowledge
    @app.post("/knowledge", summary="Ingest a txt/md/pdf document into a persona's knowledge")
    async def ingest(file: UploadFile = File(...), persona: str = Form("")) -> dict[str, Any]:
        name = Path(file.filename or "").name
        if not name:
            raise GatewayError(400, "the upload has no file name")
        if Path(name).suffix.lower() not in (".txt", ".md", ".markdown", ".pdf"):
            raise GatewayError(415, f"{name}: only .txt, .md and .pdf documents are taken")
        data = await _read_upload(file, backend.max_upload_bytes)
        return await backend.ingest(persona, name, data)

    @app.get("/knowledge", summary="A persona's documents")
    async def documents(persona: str = "") -> dict[str, Any]:
        return await backend.documents(persona)

    @app.get(
        "/knowledge/progress",
        summary="Progress of recent ingests (chunks embedded so far / chunks of the document)",
        description="The newest knowledge_progress message of each document ingested in the "
        "last minutes, newest first; `persona` and `name` filter. A POST /knowledge answers "
        "only when its document is stored: poll this meanwhile.",
    )
    async def ingest_progress(persona: str = "", name: str = "") -> dict[str, Any]:
        return backend.ingest_progress(persona, name)

    @app.post("/knowledge/search", summary="The chunks that answer a query (hybrid RAG)")
    async def search(body: SearchBody) -> dict[str, Any]:
        return await backend.search(body)

    @app.delete("/knowledge", summary="Delete every document of a persona")
    async def clear(persona: str = "") -> dict[str, Any]:
        return await backend.clear_knowledge(persona, "")

    @app.delete("/knowledge/{name}", summary="Delete one document")
    async def delete_document(name: str, persona: str = "") -> dict[str, Any]:
        return await backend.clear_knowledge(persona, name)

    return app


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
