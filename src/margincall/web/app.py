"""The dashboard's web app: Starlette routes, a block poller, server-sent events.

One thread (`Poller`) follows the chain: at every new head it refreshes the `ChainView`,
renders the system page's fragment once, the operator fragment, and one fragment per trader
page that is open, and pushes each to the pages subscribed to it (`/events/...`,
`text/event-stream`). A page's first paint is served from the last rendered fragment, so it
never waits for the chain. When the node fails, the poller publishes the reason as a
`health` event and retries with backoff; the pages keep their last values under a red banner.

The wallet actions never touch a key here: `/api/precheck` runs the SDK's checks for what the
browser is about to sign and returns the calls to send; the browser's EIP-1193 wallet signs
and sends them; `/api/tx/{hash}` reads back what the transaction did.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator
from decimal import InvalidOperation
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from margincall.sdk import MarginCallError
from margincall.web import actions
from margincall.web.chain import ChainView, DashboardError, to_account
from margincall.web.render import environment, event_line, price_svg

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0


class Poller:
    """Follows the head; renders and publishes fragments to the subscribed pages."""

    def __init__(self, app: Dashboard, poll: float = 0.2, max_backoff: float = 2.0):
        self.app = app
        self.poll = poll
        self.max_backoff = max_backoff
        self.error = ""
        self.fragments: dict[str, str] = {}
        self.subscribers: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self.sub_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-poller", daemon=True)
        self.published_at: dict[str, float] = {}

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # --- subscriptions ---

    def subscribe(self, topic: str) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=16)
        with self.sub_lock:
            self.subscribers.setdefault(topic, set()).add((asyncio.get_running_loop(), q))
        return q

    def unsubscribe(self, topic: str, q: asyncio.Queue) -> None:
        with self.sub_lock:
            subs = self.subscribers.get(topic, set())
            for item in [s for s in subs if s[1] is q]:
                subs.discard(item)
            if not subs:
                self.subscribers.pop(topic, None)

    def topics(self) -> list[str]:
        with self.sub_lock:
            return list(self.subscribers)

    def publish(self, topic: str, event: str, data: str) -> None:
        if event == "update":
            self.fragments[topic] = data
            self.published_at[topic] = time.time()
        with self.sub_lock:
            subs = list(self.subscribers.get(topic, ()))
        for loop, q in subs:
            loop.call_soon_threadsafe(_offer, q, (event, data))

    def publish_health(self) -> None:
        for topic in self.topics():
            self.publish(topic, "health", self.app.health_text(self.error))

    # --- the loop ---

    def _run(self) -> None:
        last, wait, last_operator = -1, 0.0, 0.0
        view = self.app.view
        while not self._stop.wait(wait):
            try:
                number, _ = view.latest()
                if number != last:
                    view.refresh()
                    last = number
                    self._set_error("")
                    self.render_all()
                    last_operator = time.monotonic()
                elif time.monotonic() - last_operator > 1.0:
                    self.render_operator()
                    last_operator = time.monotonic()
                wait = self.poll
            except Exception as err:  # noqa: BLE001 - the page shows it, the loop goes on
                self._set_error(view.friendly(err))
                last = -1
                wait = min(max(wait * 2, self.poll), self.max_backoff)

    def _set_error(self, error: str) -> None:
        if error != self.error:
            self.error = error
            self.publish_health()

    def render_all(self) -> None:
        self.publish("system", "update", self.app.system_fragment())
        self.render_operator()
        for topic in self.topics():
            if topic.startswith("trader:"):
                self.publish(topic, "update", self.app.trader_fragment(topic[7:])[0])

    def render_operator(self) -> None:
        self.publish("operator", "update", self.app.operator_fragment())


def _offer(q: asyncio.Queue, item: tuple[str, str]) -> None:
    """Puts `item`, dropping the oldest when a slow page lets its queue fill."""
    if q.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
    q.put_nowait(item)


def _sse(event: str, data: str) -> str:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n"


class Dashboard:
    """The view, the poller and the templates: what the routes need."""

    def __init__(
        self,
        view: ChainView,
        poll: float = 0.2,
        plot_hours: float = 6.0,
        limit: int = 50,
    ):
        self.view = view
        self.plot_hours = plot_hours
        self.limit = limit
        self.decimals = view.record.collateral_decimals
        self.env = environment(self.decimals, view.symbol)
        self.poller = Poller(self, poll)

    # --- fragments (called from the poller thread and from requests) ---

    @property
    def templates(self) -> Any:
        """The templates, with the collateral's symbol as last read from the chain."""
        self.env.globals["symbol"] = self.view.symbol
        return self.env

    def health_text(self, error: str) -> str:
        if error:
            return error
        number, stamp = self.view.head
        return f"live · block {number} · t={stamp}"

    def line(self, ev: Any) -> str:
        return event_line(ev, self.decimals)

    def system_fragment(self) -> str:
        snap = self.view.system
        if snap is None:
            return '<p class="dim">waiting for the first block from the node…</p>'
        plots = []
        for market in snap.markets:
            mid = market.market_id
            liquidated = tuple(t for t, m in snap.liquidation_times if m == mid)
            plots.append(
                price_svg(
                    snap.prices.get(mid, ()),
                    liquidated,
                    snap.timestamp,
                    self.plot_hours,
                    market.name,
                )
            )
        return self.templates.get_template("_system.html").render(
            snap=snap, plots=plots, line=self.line, limit=self.limit, warn=self.view.warn_ratio
        )

    def trader_fragment(self, account: str) -> tuple[str, str]:
        """(fragment, error): the account's fragment, or an empty one and the reason."""
        try:
            t = self.view.trader(account)
        except DashboardError as err:
            return "", str(err)
        except Exception as err:  # noqa: BLE001 - a node failure: one sentence, no traceback
            return "", self.view.friendly(err)
        html = self.templates.get_template("_trader.html").render(t=t, line=self.line)
        return html, ""

    def operator_fragment(self) -> str:
        return self.templates.get_template("_operator.html").render(o=self.view.operator())

    def page(self, name: str, topic: str, **extra: Any) -> str:
        return self.templates.get_template(name).render(
            title=name.split(".")[0],
            topic=topic,
            chain_id=self.view.record.chain_id,
            engine=self.view.record.engine,
            health_error=self.poller.error,
            health_text=self.health_text(""),
            markets=self.view.record.markets,
            **extra,
        )


# --- routes ---------------------------------------------------------------------------------


def _dash(request: Request) -> Dashboard:
    return request.app.state.dashboard


async def system_page(request: Request) -> Response:
    d = _dash(request)
    fragment = d.poller.fragments.get("system") or d.system_fragment()
    return HTMLResponse(d.page("system.html", "system", fragment=fragment))


async def operator_page(request: Request) -> Response:
    d = _dash(request)
    fragment = d.poller.fragments.get("operator") or await run_in_threadpool(d.operator_fragment)
    return HTMLResponse(d.page("operator.html", "operator", fragment=fragment))


async def trader_page(request: Request) -> Response:
    d = _dash(request)
    text = request.query_params.get("account", "").strip()
    if not text:
        return HTMLResponse(d.page("trader.html", "", account="", account_text="", error=""))
    try:
        account = to_account(text)
    except DashboardError as err:
        html = d.page("trader.html", "", account="", account_text=text, error=str(err))
        return HTMLResponse(html, status_code=400)
    fragment, error = await run_in_threadpool(d.trader_fragment, account)
    if error:
        html = d.page("trader.html", "", account="", account_text=text, error=error)
        return HTMLResponse(html, status_code=404 if "no margin account" in error else 503)
    topic = f"trader:{account}"
    html = d.page(
        "trader.html", topic, account=account, account_text=account, error="", fragment=fragment
    )
    return HTMLResponse(html)


async def events(request: Request) -> Response:
    d = _dash(request)
    topic = request.path_params["topic"]
    if topic == "trader":
        try:
            topic = f"trader:{to_account(request.query_params.get('account', ''))}"
        except DashboardError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
    elif topic not in ("system", "operator"):
        return JSONResponse({"error": f"no such topic {topic!r}"}, status_code=404)
    q = d.poller.subscribe(topic)

    async def stream() -> AsyncIterator[str]:
        try:
            yield _sse("health", d.health_text(d.poller.error))
            if topic.startswith("trader:"):
                html, _ = await run_in_threadpool(d.trader_fragment, topic[7:])
                if html:
                    yield _sse("update", html)
            elif topic in d.poller.fragments:
                yield _sse("update", d.poller.fragments[topic])
            while True:
                try:
                    event, data = await asyncio.wait_for(q.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                yield _sse(event, data)
        finally:
            d.poller.unsubscribe(topic, q)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


async def precheck(request: Request) -> Response:
    d = _dash(request)
    try:
        body = await request.json()
        result = await run_in_threadpool(actions.precheck, d.view, body)
    except (DashboardError, MarginCallError, ValueError, InvalidOperation) as err:
        return JSONResponse({"ok": False, "error": str(err)})
    except Exception as err:  # noqa: BLE001 - a node failure
        return JSONResponse({"ok": False, "error": d.view.friendly(err)}, status_code=503)
    return JSONResponse(result)


async def tx_result(request: Request) -> Response:
    d = _dash(request)
    try:
        result = await run_in_threadpool(actions.tx_result, d.view, request.path_params["tx"])
    except DashboardError as err:
        return JSONResponse({"ok": False, "error": str(err)}, status_code=404)
    except Exception as err:  # noqa: BLE001
        return JSONResponse({"ok": False, "error": d.view.friendly(err)}, status_code=503)
    return JSONResponse(result)


async def healthz(request: Request) -> Response:
    d = _dash(request)
    number, stamp = d.view.head
    return JSONResponse({"ok": not d.poller.error, "error": d.poller.error, "block": number})


def create_app(view: ChainView, poll: float = 0.2, plot_hours: float = 6.0) -> Starlette:
    """The app; its lifespan starts and stops the poller."""
    dashboard = Dashboard(view, poll, plot_hours)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dashboard.poller.start()
        try:
            yield
        finally:
            dashboard.poller.stop()

    routes = [
        Route("/", system_page),
        Route("/trader", trader_page),
        Route("/operator", operator_page),
        Route("/events/{topic}", events),
        Route("/api/precheck", precheck, methods=["POST"]),
        Route("/api/tx/{tx}", tx_result),
        Route("/healthz", healthz),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dashboard = dashboard
    return app


__all__ = ["Dashboard", "Poller", "create_app"]
