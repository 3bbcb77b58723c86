"""One loopback HTTP server for all four provider fakes, with the request log and fault injection.

Every request goes through the same steps, so each fake only has to know its API:
log arrival -> optional latency -> the provider's auth check (401/403 are never faulted and not
counted against the budget) -> the rate window (over the limit: the provider's 429) -> a fault
draw (429 with a reset <= 1 s away, 500, 503, a stall before answering, or a body cut in half) ->
the provider's answer. Alpaca and Tradier add their rate headers to every answer. A provider whose
quota is spent (`FakeConfig.quota_exhausted`) answers every authenticated request 429 with
`Retry-After`.

Standard library only: `ThreadingHTTPServer` (HTTP/1.1 keep-alive, daemon handler threads) in a
daemon thread.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

import pandas as pd

from backfill_dagster.domain.bars import empty_bars
from backfill_dagster.domain.timeframes import Timeframe
from backfill_dagster.fakes.alpaca import AlpacaFake
from backfill_dagster.fakes.base import BadRequest, ProviderFake, Request, Response, json_response
from backfill_dagster.fakes.config import FakeConfig
from backfill_dagster.fakes.control import FaultDraws, Logged, RateWindows, RequestLog, WindowState
from backfill_dagster.fakes.data import BarData
from backfill_dagster.fakes.polygon import PolygonFake
from backfill_dagster.fakes.tradier import TradierFake
from backfill_dagster.fakes.yahoo import YahooFake

log = logging.getLogger(__name__)

FAKES = (AlpacaFake, PolygonFake, TradierFake, YahooFake)


class FakeProviders:
    """Alpaca, Polygon, Tradier and Yahoo fakes on one host:port; a context manager."""

    def __init__(self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0):
        self._config = config or FakeConfig()
        self.host = host
        self._requested_port = port
        self._data = BarData(withheld=lambda: self._config.withheld, actions=lambda: self._config.corporate_actions)
        self._fakes: dict[str, ProviderFake] = {cls.name: cls(self._config, self._data) for cls in FAKES}
        self._log = RequestLog()
        self._windows = RateWindows()
        self._faults = FaultDraws()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        # Paths of the requests held now (FakeConfig.held_symbols), each as often as it waits.
        self._waiting: list[str] = []
        self._waiting_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeProviders:
        if self._server is not None:
            return self
        self._config.validate()
        self._stopping.clear()
        self._server = _Server((self.host, self._requested_port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-providers", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers stalled by latency or a "timeout" fault
        self._server.shutdown()
        self._server.server_close()
        # Keep-alive connections would otherwise go on being served by their handler threads.
        with self._connections_lock:
            for conn in list(self._connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server, self._thread = None, None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ what clients need
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fake providers are not running: call start() or use `with`")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The settings that point the real clients at the fakes."""
        url, c = self.url, self._config
        return {
            "ALPACA_DATA_URL": url,
            "ALPACA_API_KEY": c.alpaca_key,
            "ALPACA_API_SECRET": c.alpaca_secret,
            "POLYGON_API_URL": url,
            "POLYGON_API_KEY": c.polygon_key,
            "TRADIER_API_URL": url,
            "TRADIER_API_TOKEN": c.tradier_token,
            "YAHOO_CHART_URL": url,
        }

    @property
    def config(self) -> FakeConfig:
        return self._config

    @config.setter
    def config(self, value: FakeConfig) -> None:
        value.validate()
        self._config = value
        for fake in self._fakes.values():
            fake.config = value

    # ------------------------------------------------------------------ what tests assert on
    @property
    def log(self) -> list[Logged]:
        return self._log.entries()

    def calls(self, provider: str) -> int:
        return self._log.calls(provider)

    @property
    def held(self) -> list[str]:
        """Paths of the requests waiting now on a held symbol: a test knows a client is stuck
        there (e.g. before killing it), where the log only shows a request once it is answered."""
        with self._waiting_lock:
            return list(self._waiting)

    def max_in_window(self, provider: str, window_s: float) -> int:
        return self._log.max_in_window(provider, window_s)

    def reset(self) -> None:
        """Forget the log, the rate windows and the fault draws (a replay then meets the same faults)."""
        self._log.clear()
        self._windows.clear()
        self._faults.clear()

    def bars(
        self, timeframe: Timeframe | str, symbol: str, session: date, *, extended: bool = True, adjusted: bool = True
    ) -> pd.DataFrame:
        """The bar frame the fakes serve for one partition now (m15: 04:00-20:00 unless extended=False;
        split-adjusted as of now unless adjusted=False)."""
        if self._config.is_unknown(symbol):
            return empty_bars()
        return self._data.frame(
            timeframe, symbol, session, self._config.current_time().value,
            extended=extended, no_trade_rate=self._config.no_trade_rate, adjusted=adjusted,
        )

    # ------------------------------------------------------------------ one request
    def _route(self, path: str):
        for fake in self._fakes.values():
            found = fake.route(path)
            if found is not None:
                return fake, found[0], {k: unquote(v) for k, v in found[1].items()}
        return None, None, {}

    def _handle(self, handler: _Handler) -> None:
        at = time.time()
        split = urlsplit(handler.path)
        query: dict[str, str] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            query.setdefault(name, value)  # the first value, like most web frameworks
        fake, serve, params = self._route(split.path)
        config = self._config
        if config.latency_s > 0:
            self._stopping.wait(config.latency_s)
        if fake is not None:
            self._hold(params, query, split.path)
        fault = None
        if fake is None:
            response = json_response(404, {"message": f"no fake provider serves {split.path}"})
        else:
            response, fault = self._answer(fake, serve, params, split, query, handler, config, at)
        # Logged before sending: once a client has its answer, the log already shows the request.
        self._log.add(Logged(fake.name if fake else "unknown", split.path, query, response.status, at, response.bars))
        self._send(handler, response, truncate=fault == "truncated")

    def _hold(self, params: dict[str, str], query: dict[str, str], path: str) -> None:
        """Wait while the request names a held symbol (FakeConfig.held_symbols)."""
        named = {params.get("ticker"), params.get("symbol"), query.get("symbol"), query.get("ticker"),
                 *query.get("symbols", "").split(",")}
        if not named & self._config.held_symbols:
            return
        with self._waiting_lock:
            self._waiting.append(path)
        try:
            while named & self._config.held_symbols and not self._stopping.is_set():
                self._stopping.wait(0.05)
        finally:
            with self._waiting_lock:
                self._waiting.remove(path)

    def _answer(self, fake, serve, params, split, query, handler, config, at) -> tuple[Response, str | None]:
        request = Request(
            path=split.path,
            query=query,
            headers=handler.headers,
            params=params,
            now=config.current_time(),
            base_url=self._base_url(handler),
        )
        limit = config.rate_limit(fake.name)
        fault, window = None, None
        try:
            refused = fake.authenticate(request)
            if refused is not None:
                window = self._windows.peek(fake.name, at, limit, config.rate_window_s)
                response = refused
            elif fake.name in config.quota_exhausted:
                response, window = quota_exhausted_answer(fake, config.quota_exhausted[fake.name], at, limit)
            else:
                window = self._windows.hit(fake.name, at, limit, config.rate_window_s)
                if window.exceeded:
                    response = fake.too_many_requests(window)
                else:
                    key = f"{split.path}?{split.query}"
                    fault = self._faults.draw(config.seed, fake.name, key, config.fault_rate, tuple(config.faults))
                    response, window = self._serve(fake, serve, request, window, fault, config)
        except BadRequest as exc:
            response = exc.response
        except Exception:  # a bug in a fake: say so loudly rather than hang the client
            log.exception("fake %s failed on %s", fake.name, split.path)
            response = json_response(500, {"message": f"fake {fake.name} crashed on {split.path}: see the server log"})
        if fake.rate_headers_always:
            window = window or self._windows.peek(fake.name, at, limit, config.rate_window_s)
            response.headers.update(fake.rate_headers(window))
        return response, fault

    def _serve(self, fake, serve, request, window, fault, config) -> tuple[Response, WindowState]:
        if fault == "429":
            # A throttle the client should ride out quickly: the reset is at most 1 s away.
            short = WindowState(window.limit, window.used, float(int(time.time()) + 1), exhausted=True)
            return fake.too_many_requests(short), short
        if fault in ("500", "503"):
            return fake.server_error(int(fault)), window
        if fault == "timeout":
            self._stopping.wait(config.timeout_sleep_s)
        try:
            response = serve(request)
        except BadRequest as exc:
            return exc.response, window
        if fault == "invalid" and response.status == 200:
            response = with_one_invalid_bar(response)
        return response, window

    def _base_url(self, handler: _Handler) -> str:
        host = handler.headers.get("Host")
        return f"http://{host}" if host else self.url

    def _send(self, handler: _Handler, response: Response, *, truncate: bool) -> None:
        """Write the response; a truncated one announces its full length, sends half, hangs up."""
        body = response.body
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", response.content_type)
            handler.send_header("Content-Length", str(len(body)))
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2] if truncate else body)
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            handler.close_connection = True  # the client gave up (e.g. its timeout during a stall)
        if truncate:
            handler.close_connection = True

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._connections_lock:
            (self._connections.add if add else self._connections.discard)(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # a benchmark opens many connections at once
    owner: FakeProviders


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections as they do with the real APIs
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle and the client's
    # delayed ACK would add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.owner._handle(self)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        log.debug("%s %s", self.address_string(), format % args)


def quota_exhausted_answer(fake: ProviderFake, retry_after_s: float, at: float, limit: int | None) -> tuple[Response, WindowState]:
    """The provider's 429 for a spent quota: nothing left until `retry_after_s` from now, which
    `Retry-After` (and Alpaca's and Tradier's reset headers) say."""
    spent = WindowState(limit, limit or 0, at + retry_after_s, exhausted=True)
    response = fake.too_many_requests(spent)
    response.headers["Retry-After"] = f"{retry_after_s:g}"
    return response, spent


def with_one_invalid_bar(response: Response) -> Response:
    """The same answer with its first bar's high set below its low, in any provider's shape:
    bar objects with h/l (Alpaca, Polygon) or high/low (Tradier), or Yahoo's parallel lists."""
    zipped = response.headers.get("Content-Encoding") == "gzip"
    try:
        payload = json.loads(gzip.decompress(response.body) if zipped else response.body)
    except ValueError:
        return response  # not JSON (Tradier XML): nothing to corrupt

    def rebuilt() -> Response:
        body = json.dumps(payload).encode()
        return Response(response.status, gzip.compress(body) if zipped else body, response.content_type,
                        dict(response.headers), response.bars)

    stack = [payload]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for high, low in (("h", "l"), ("high", "low")):
                h, lo = node.get(high), node.get(low)
                if isinstance(h, (int, float)) and isinstance(lo, (int, float)):
                    node[high] = round(lo - 1.0, 2)
                    return rebuilt()
                if isinstance(h, list) and isinstance(lo, list):
                    for i, (a, b) in enumerate(zip(h, lo)):
                        if a is not None and b is not None:
                            h[i] = round(b - 1.0, 2)
                            return rebuilt()
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return response
