"""HTTP: the /tensorboard/<selection>/ routes, the view refresh, and the streaming proxy.

nginx has already checked that the caller may read every experiment in the URL; the router
does no authorization and strips credentials before anything reaches TensorBoard.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from . import views
from .catalog import CatalogUnavailable
from .pool import Pool, StartFailed
from .selection import Selection, parse

log = logging.getLogger(__name__)

# Every request asks the database which runs are active (one indexed query): a run deleted in
# MLflow is gone from the next answer, not a second later.
REFRESH_S = 0.0
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
# Hop-by-hop headers (RFC 9110 7.6.1) belong to one connection, never forwarded; and
# credentials, which TensorBoard never needs (defence in depth: nginx drops them too).
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
              "upgrade", "proxy-authenticate"}
DROP_REQUEST = HOP_BY_HOP | {"host", "authorization", "cookie", "proxy-authorization"}


class NotFound(Exception):
    pass


@dataclass
class _View:
    lock: asyncio.Lock
    refreshed: float = 0.0
    missing: str | None = None  # the 404 message of the last refresh, if it found one


class Router:
    """Keeps each selection's view fresh (at most once a second) and its TensorBoard running."""

    def __init__(self, catalog, pool: Pool, tb_root: Path, views_root: Path):
        self.catalog = catalog
        self.pool = pool
        self.tb_root = tb_root
        self.views_root = views_root
        self._views: dict[str, _View] = {}

    def view_dir(self, selection: Selection) -> Path:
        return self.views_root / selection.name

    async def prepare(self, selection: Selection) -> int:
        """Refresh the view if due, then the port of a ready TensorBoard over it."""
        if len(self._views) > 2 * self.pool.max_resident:
            await self._forget_unused()
        state = self._views.setdefault(selection.name, _View(asyncio.Lock()))
        async with state.lock:
            if time.monotonic() - state.refreshed >= REFRESH_S:
                try:
                    await self._refresh(selection)
                    state.missing = None
                except NotFound as exc:
                    state.missing = str(exc)
                state.refreshed = time.monotonic()
            if state.missing:
                raise NotFound(state.missing)
        return await self.pool.ensure(selection)

    async def _refresh(self, selection: Selection) -> None:
        lookup = await asyncio.to_thread(self.catalog.lookup, selection.ids)
        if lookup.missing:
            await self.pool.stop(selection.name, f"experiment {lookup.missing[0]} was deleted")
            raise NotFound(f"experiment {lookup.missing[0]} does not exist or was deleted")
        # Filesystem work off the event loop: the volume may be slow, other requests go on.
        changes = await asyncio.to_thread(self._sync, selection, lookup.runs)
        if changes.removed and selection.name in self.pool.resident():
            # Stock TensorBoard keeps what it loaded; only a new process forgets a deleted run.
            await self.pool.stop(selection.name, f"run deleted: {', '.join(changes.removed)}")


    async def _forget_unused(self) -> None:
        """The views of selections with no TensorBoard running: every selection a user ever
        asked for must not stay on disk and in memory (each is rebuilt when asked again)."""
        resident = set(self.pool.resident())
        for name, state in list(self._views.items()):
            if name not in resident and not state.lock.locked():
                del self._views[name]
                await asyncio.to_thread(views.remove, self.views_root / name)

    def _sync(self, selection: Selection, runs) -> views.Changes:
        links = views.desired_links(self.tb_root, runs, selection.nested)
        return views.sync(self.view_dir(selection), links)


def _text(status: int, message: str) -> PlainTextResponse:
    return PlainTextResponse(message + "\n", status_code=status)


def create_app(router: Router, *, check_every_s: float = 30.0) -> Starlette:
    client = httpx.AsyncClient(
        # Reads may be slow (a big scalars request while TensorBoard loads); connecting is not.
        timeout=httpx.Timeout(300.0, connect=5.0), trust_env=False, follow_redirects=False,
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def selection_root(request: Request) -> Response:
        # TensorBoard's page loads its assets relative to the selection's folder.
        parsed = parse(request.path_params["selection"])
        if parsed is None:
            return _text(404, f"no such TensorBoard selection: {request.path_params['selection']!r}")
        return _redirect(request, parsed[0].name, "/")

    async def proxy(request: Request) -> Response:
        segment = request.path_params["selection"]
        parsed = parse(segment)
        if parsed is None:
            return _text(404, f"no such TensorBoard selection: {segment!r}")
        selection, canonical = parsed
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        rest = raw_path.decode("latin-1").split("/", 3)[3]  # after /tensorboard/<selection>/
        if not canonical:
            return _redirect(request, selection.name, "/" + rest)
        try:
            port = await router.prepare(selection)
        except NotFound as exc:
            return _text(404, str(exc))
        except CatalogUnavailable:
            return _text(503, "the MLflow database cannot be reached right now; try again shortly")
        except StartFailed as exc:
            return _text(503, str(exc))

        headers = [(k, v) for k, v in request.headers.raw
                   if k.decode("latin-1").lower() not in DROP_REQUEST]
        url = f"http://127.0.0.1:{port}/tensorboard/{selection.name}/{rest}"
        if request.url.query:
            url += "?" + request.url.query
        has_body = request.method not in ("GET", "HEAD") or "content-length" in request.headers \
            or "transfer-encoding" in request.headers
        upstream = client.build_request(request.method, url, headers=headers,
                                        content=request.stream() if has_body else None)
        try:
            response = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            log.warning("TensorBoard for %s did not answer: %s", selection.title, exc)
            return _text(503, f"TensorBoard for {selection.title} did not answer; try again")
        router.pool.touch(selection)
        out = StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                background=BackgroundTask(response.aclose))
        out.raw_headers = [(k, v) for k, v in response.headers.raw
                           if k.decode("latin-1").lower() not in HOP_BY_HOP]
        return out

    async def font(request: Request) -> Response:
        # TensorBoard's pages ask for their fonts at the site root whatever the path prefix
        # (nginx sends /font-roboto/* here): the same files in every TensorBoard, no run data.
        data = _font(request.path_params["name"])
        if data is None:
            return _text(404, "no such font file")
        media = "font/woff2" if request.path_params["name"].endswith(".woff2") else "text/html"
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=86400"})

    async def not_found(request: Request, exc) -> Response:
        return _text(404, "not found: TensorBoard lives under /tensorboard/<experiment id>/")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        checker = asyncio.create_task(router.pool.run_checks(check_every_s))
        try:
            yield
        finally:
            checker.cancel()
            await router.pool.close()
            await client.aclose()

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET", "HEAD"]),
            Route("/tensorboard/fonts/font-roboto/{name}", font, methods=["GET", "HEAD"]),
            Route("/tensorboard/{selection}", selection_root, methods=METHODS),
            Route("/tensorboard/{selection}/{rest:path}", proxy, methods=METHODS),
        ],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )


@functools.cache
def _webfiles() -> zipfile.ZipFile:
    import tensorboard

    return zipfile.ZipFile(Path(tensorboard.__file__).parent / "webfiles.zip")


def _font(name: str) -> bytes | None:
    try:
        return _webfiles().read(f"font-roboto/{name}") if "/" not in name else None
    except KeyError:
        return None


def _redirect(request: Request, selection: str, rest: str) -> Response:
    url = f"/tensorboard/{selection}{rest}"
    if request.url.query:
        url += "?" + request.url.query
    return RedirectResponse(url, status_code=308)
