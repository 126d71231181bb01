"""Where the draft replicas are: a static list, DNS, or Kubernetes EndpointSlices.

Every source implements :class:`DrafterSource`: ``start(on_change)`` calls ``on_change``
with the whole set of ``host:port`` addresses at once and again whenever it changes, from
the source's own thread; ``close()`` stops it. :func:`parse_draft_address` turns the
``--draft-address`` flag into a source:

- ``none`` — no drafter (target-only);
- ``h1:p1,h2:p2`` — a static list;
- ``dns:NAME:PORT`` — every A/AAAA record of NAME is one replica, re-resolved periodically
  (a Kubernetes headless service gives one record per ready pod);
- ``k8s:NAMESPACE/SERVICE:PORTNAME`` — list + watch the ``discovery.k8s.io/v1``
  EndpointSlices labelled ``kubernetes.io/service-name=SERVICE``: ready endpoints, the port
  named PORTNAME. Needs the ``kubernetes`` package and RBAC ``list``/``watch`` on
  ``endpointslices`` in NAMESPACE.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)

OnChange = Callable[[frozenset[str]], None]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class DrafterSource(Protocol):
    def start(self, on_change: OnChange) -> None:
        """Report the current addresses (before returning when the source can), then every change."""
        ...

    def close(self) -> None: ...


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """``("10.0.0.7", 50053)`` from ``"10.0.0.7:50053"`` (``[::1]:50053`` for IPv6)."""
    host, sep, port = address.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host, int(port)


class StaticSource:
    """A fixed list of replicas."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = frozenset(join_host_port(*split_host_port(a)) for a in addresses)
        if not self.addresses:
            raise ValueError("a static drafter list needs at least one HOST:PORT")

    def start(self, on_change: OnChange) -> None:
        on_change(self.addresses)

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"StaticSource({','.join(sorted(self.addresses))})"


def resolve_ips(name: str, port: int) -> list[str]:
    """Every address ``name`` resolves to (A and AAAA records), via ``socket.getaddrinfo``."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


class _Poller:
    """A daemon thread that calls ``fn`` every ``interval_s`` until stopped."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._interval = interval_s
        self._fn = fn
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._fn()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)


class DnsSource:
    """``dns:NAME:PORT``: one replica per address NAME resolves to, re-resolved every ``interval_s``.

    A failed lookup keeps the last answer (a DNS hiccup must not empty the pool; replicas
    that are really gone fail their calls and leave the ring). ``resolve`` is injectable.
    """

    def __init__(
        self,
        name: str,
        port: int,
        interval_s: float = 5.0,
        resolve: Callable[[str, int], Sequence[str]] = resolve_ips,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"DNS re-resolve interval must be > 0, got {interval_s}")
        self.name, self.port = name, port
        self._resolve = resolve
        self._on_change: OnChange | None = None
        self._last: frozenset[str] | None = None
        self._poller = _Poller(f"dns-{name}", interval_s, self.poll)

    def start(self, on_change: OnChange) -> None:
        self._on_change = on_change
        self.poll()
        self._poller.start()

    def poll(self) -> None:
        """Resolve once; report the addresses if they changed."""
        try:
            ips = self._resolve(self.name, self.port)
        except OSError as err:
            log.warning("dns:%s:%d: lookup failed (%s); keeping %s", self.name, self.port, err, self._last)
            return
        addresses = frozenset(join_host_port(ip, self.port) for ip in ips)
        if addresses != self._last and self._on_change is not None:
            self._last = addresses
            self._on_change(addresses)

    def close(self) -> None:
        self._poller.stop()

    def __repr__(self) -> str:
        return f"DnsSource({self.name}:{self.port})"


def load_api_client() -> Any:
    """A ``kubernetes.client.ApiClient``: in-cluster service account, else the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException:
        config.load_kube_config(client_configuration=cfg)
    return client.ApiClient(cfg)


class KubernetesSource:
    """``k8s:NAMESPACE/SERVICE:PORTNAME``: follows the EndpointSlices of a Service.

    List, then watch from the list's resourceVersion, resuming each watch from the last
    version seen; on 410 Gone (the version expired) list again; on any other failure
    reconnect after an exponential backoff (``backoff_initial_s`` doubling to
    ``backoff_max_s``). An endpoint counts when ``conditions.ready`` is not false (unset
    means ready); its address is ``ADDRESS:PORT`` with the slice's port named ``port_name``.
    ``api_client`` defaults to :func:`load_api_client`.
    """

    def __init__(
        self,
        namespace: str,
        service: str,
        port_name: str,
        *,
        api_client: Any = None,
        watch_timeout_s: int = 240,
        request_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.namespace, self.service, self.port_name = namespace, service, port_name
        self.selector = f"{SERVICE_NAME_LABEL}={service}"
        self._api_client = api_client
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._backoff = (backoff_initial_s, backoff_max_s)
        self._slices: dict[str, frozenset[str]] = {}  # slice name -> its ready addresses
        self._last: frozenset[str] | None = None
        self._on_change: OnChange | None = None
        self._stop = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"k8s-{namespace}-{service}", daemon=True)
        self.lists = 0  # list calls made (the first, then one per 410 or reconnect)

    def start(self, on_change: OnChange) -> None:
        """Start following; ValueError when there is no client package or no cluster config."""
        try:
            from kubernetes import client, config
        except ImportError:
            raise ValueError(f"{self!r} needs the 'kubernetes' package (pip install 'specd[serve]')") from None
        try:
            api_client = self._api_client or load_api_client()
        except config.ConfigException as err:
            raise ValueError(f"{self!r}: no in-cluster service account and no usable kubeconfig ({err})") from None
        self._on_change = on_change
        self._api = client.DiscoveryV1Api(api_client)
        self._thread.start()

    def close(self) -> None:
        """Stop following: cut the open watch (again until it is cut: one may be starting)."""
        self._stop.set()
        deadline = time.monotonic() + 5.0
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self._watch is not None:
                self._watch.stop()
            self._thread.join(0.05)

    # ---------------------------------------------------------------- list + watch
    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0
        while not self._stop.is_set():
            try:
                version = self._list()
                failures = 0
                while not self._stop.is_set():
                    version = self._watch_from(version)
            except ApiException as err:
                if self._stop.is_set():
                    return
                if err.status == 410:
                    log.info("%r: resourceVersion expired (410 Gone); listing again", self)
                    continue
                failures += 1
                self._pause(failures, f"API error {err.status} {err.reason}")
            except Exception as err:  # connection refused, timeouts, malformed responses
                if self._stop.is_set():
                    return  # close() cut the watch's socket
                failures += 1
                self._pause(failures, f"{type(err).__name__}: {err}")

    def _pause(self, failures: int, why: str) -> None:
        delay = min(self._backoff[1], self._backoff[0] * 2 ** min(failures - 1, 30))
        log.warning("%r: %s; reconnecting in %.1f s", self, why, delay)
        self._stop.wait(delay)

    def _list(self) -> str:
        self.lists += 1
        resp: Any = self._api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=self.selector, _request_timeout=self._request_timeout_s
        )
        self._slices = {s.metadata.name: self._ready_addresses(s) for s in resp.items or ()}
        self._publish()
        return str(resp.metadata.resource_version)

    def _watch_from(self, version: str) -> str:
        """Apply watch events from ``version`` until the server ends the watch; the last version seen."""
        from kubernetes import watch

        self._watch = w = watch.Watch()
        if self._stop.is_set():
            return version
        stream = w.stream(
            self._api.list_namespaced_endpoint_slice,
            self.namespace,
            label_selector=self.selector,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout_s,
            _request_timeout=(self._request_timeout_s, self._watch_timeout_s + self._request_timeout_s),
        )
        for event in stream:  # an ERROR event (410 included) raises ApiException
            kind, obj = event["type"], event["object"]
            if kind in ("ADDED", "MODIFIED"):
                self._slices[obj.metadata.name] = self._ready_addresses(obj)
            elif kind == "DELETED":
                self._slices.pop(obj.metadata.name, None)
            self._publish()
        return str(w.resource_version or version)

    def _ready_addresses(self, endpoint_slice: Any) -> frozenset[str]:
        port = next((p.port for p in endpoint_slice.ports or () if p.name == self.port_name and p.port), None)
        if port is None:
            return frozenset()
        return frozenset(
            join_host_port(address, port)
            for endpoint in endpoint_slice.endpoints or ()
            if endpoint.conditions is None or endpoint.conditions.ready is not False
            for address in endpoint.addresses
        )

    def _publish(self) -> None:
        addresses = frozenset().union(*self._slices.values())
        if addresses != self._last and self._on_change is not None:
            self._last = addresses
            log.info("%r: %d ready endpoints", self, len(addresses))
            self._on_change(addresses)

    def __repr__(self) -> str:
        return f"KubernetesSource({self.namespace}/{self.service}:{self.port_name})"


def parse_draft_address(spec: str, *, dns_interval_s: float = 5.0, api_client: Any = None) -> DrafterSource | None:
    """The source for a ``--draft-address`` value (see the module docstring); None for ``none``.

    Raises ValueError naming the accepted forms when ``spec`` fits none of them.
    """
    spec = spec.strip()
    forms = "none, HOST:PORT[,HOST:PORT...], dns:NAME:PORT or k8s:NAMESPACE/SERVICE:PORTNAME"
    if spec in ("", "none"):
        return None
    if spec.startswith("dns:"):
        try:
            name, port = split_host_port(spec[4:])
        except ValueError:
            raise ValueError(f"--draft-address {spec!r}: expected dns:NAME:PORT") from None
        return DnsSource(name, port, dns_interval_s)
    if spec.startswith("k8s:"):
        target, _, port_name = spec[4:].rpartition(":")
        namespace, _, service = target.partition("/")
        if not (namespace and service and port_name) or "/" in service:
            raise ValueError(f"--draft-address {spec!r}: expected k8s:NAMESPACE/SERVICE:PORTNAME")
        return KubernetesSource(namespace, service, port_name, api_client=api_client)
    try:
        return StaticSource(a for a in spec.split(",") if a.strip())
    except ValueError as err:
        raise ValueError(f"--draft-address {spec!r}: {err}; use {forms}") from None
