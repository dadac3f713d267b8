"""The token-less downloader: only from allowed origins, within a size cap and a deadline, hashed,
fsynced, and the partial file removed on any failure.

Outputs come from the API's own origin (https, or plain http for a loopback emulator) or from
RunComfy's media hosts (https on the default port); a URL or a redirect anywhere else is refused.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from orchestrator.errors import DownloadError, OutputExpired, ServerError
from orchestrator.retry import (
    MIN_DOWNLOAD_RATE,
    DeadlineExceeded,
    RetryPolicy,
    describe,
    parse_retry_after,
    total_deadline,
)

__all__ = ["DOWNLOAD_DOMAINS", "Downloaded", "Downloader", "download_allowed"]

DOWNLOAD_DOMAINS = ("runcomfy.net", "runcomfy.com")
MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({408, 429})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What opening a partial file's name says when something that is not a regular file is there.
_NOT_A_FILE = frozenset({errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class Downloaded:
    """A file fully written, fsynced and hashed."""

    path: Path
    size: int
    sha256: str
    content_type: str | None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    scheme = url.scheme.lower()
    return scheme, (url.host or "").lower(), url.port or _DEFAULT_PORTS.get(scheme)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def download_allowed(url: httpx.URL, api: httpx.URL) -> bool:
    """The API's own origin (plain http only on loopback), or https on RunComfy's media hosts."""
    scheme, host, port = _origin(url)
    if (scheme, host, port) == _origin(api):
        return scheme == "https" or (scheme == "http" and _loopback(host))
    on_cdn = any(host == d or host.endswith("." + d) for d in DOWNLOAD_DOMAINS)
    return scheme == "https" and on_cdn and port == 443


def short(url: str | httpx.URL) -> str:
    """A URL without its query (signed CDN URLs carry credentials there)."""
    try:
        return str(httpx.URL(str(url)).copy_with(query=None, fragment=None))
    except httpx.InvalidURL:
        return repr(str(url)[:200])


def _where(url: httpx.URL) -> str:
    port = f":{url.port}" if url.port else ""
    return f"{url.host or 'no host'}{port} over {url.scheme or 'no scheme'}"


class ShortBody(DownloadError):
    """The body ended before Content-Length: retried."""


def retryable(exc: BaseException) -> bool:
    """A download failure worth another attempt: transport, 5xx/429/408, a short body."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError):
        return False
    return isinstance(exc, httpx.TransportError | ServerError | ShortBody)


class Downloader:
    """Streams outputs to disk through a client that never held the token."""

    def __init__(
        self,
        files: httpx.AsyncClient,
        api_base: str,
        *,
        retry: RetryPolicy,
        timeout: float,
        max_bytes: int,
        scrub: Callable[[str], str],
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._pace = pace  # waits for the client's pacer (rate limit, 429 pause)
        self._files = files
        self._api = httpx.URL(api_base)
        self.retry = retry
        self._timeout = timeout
        self.max_bytes = max_bytes
        self._scrub = scrub

    async def download(self, url: str, dest: Path) -> Downloaded:
        """Stream ``url`` to ``dest``; the partial file is removed on failure."""
        what = self._scrub(f"download of {short(url)}")
        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise DownloadError(f"{what}: not a valid URL") from exc
        self._check(target, what, "to download from")
        try:
            return await self.retry.retrying(retryable, what, self._scrub)(
                self._once, target, dest, what
            )
        except (httpx.HTTPError, ServerError) as exc:
            why = exc.message if isinstance(exc, ServerError) else describe(exc)
            raise DownloadError(
                self._scrub(f"{what}: {why} (gave up after {self.retry.attempts} attempts)")
            ) from exc

    def _check(self, url: httpx.URL, what: str, doing: str) -> None:
        if not download_allowed(url, self._api):
            api = _origin(self._api)
            raise DownloadError(
                f"{what}: refusing {doing} {_where(url)} (only https on *.runcomfy.net or "
                f"*.runcomfy.com, or the API's own origin {api[0]}://{api[1]}:{api[2]})"
            )

    async def _once(self, url: httpx.URL, dest: Path, what: str) -> Downloaded:
        """One attempt, redirects followed by hand, within a deadline that grows with the bytes."""
        if self._pace is not None:  # before the deadline starts: waiting is not slowness
            await self._pace()
        base = total_deadline(self._timeout)
        started = anyio.current_time()
        try:
            with anyio.fail_after(base) as scope:

                def received(size: int) -> None:
                    scope.deadline = started + base + size / MIN_DOWNLOAD_RATE

                return await self._follow(url, dest, what, received)
        except TimeoutError:
            raise DeadlineExceeded(
                f"not complete after {anyio.current_time() - started:.1f}s (the total deadline "
                f"is {base:g}s plus a second per {MIN_DOWNLOAD_RATE // 1024} KiB received)"
            ) from None

    async def _follow(
        self, url: httpx.URL, dest: Path, what: str, received: Callable[[int], None]
    ) -> Downloaded:
        for _ in range(MAX_REDIRECTS + 1):
            request = self._files.build_request("GET", url, headers={"Accept-Encoding": "identity"})
            response = await self._files.send(request, stream=True)
            try:
                if response.next_request is not None:
                    url = response.next_request.url
                    self._check(url, what, "a redirect to")
                    continue
                self._check_status(response, what)
                return await self._save(response, dest, what, received)
            finally:
                await response.aclose()
        raise DownloadError(f"{what}: more than {MAX_REDIRECTS} redirects")

    @staticmethod
    def _check_status(response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status in (403, 404, 410):
            raise OutputExpired(
                f"{what}: the output URL has expired (HTTP {status})", status=status
            )
        if status >= 500 or status in RETRY_STATUSES:
            raise ServerError(
                f"{what}: HTTP {status}",
                status_code=status,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if not response.is_success:
            raise DownloadError(f"{what}: HTTP {status}", status=status)

    async def _save(
        self, response: httpx.Response, dest: Path, what: str, received: Callable[[int], None]
    ) -> Downloaded:
        length_header = response.headers.get("content-length", "")
        expected = int(length_header) if length_header.strip().isdigit() else None
        limit = self.max_bytes
        if expected is not None and expected > limit:
            raise DownloadError(f"{what}: {expected} bytes is over the {limit}-byte limit")
        digest = hashlib.sha256()
        size = 0
        fd = _create(dest, what)
        # Plain writes: a 64 KiB write to the page cache takes microseconds, a thread hop per
        # chunk costs more; only the fsync (which can take long) goes to a worker thread.
        try:
            with open(fd, "wb") as out:  # noqa: ASYNC230
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise DownloadError(f"{what}: more than the {limit}-byte limit")
                    digest.update(chunk)
                    out.write(chunk)
                    received(size)
                # Content-Length counts the bytes on the wire, before any content decoding.
                encoded = response.headers.get("content-encoding", "identity") != "identity"
                got = response.num_bytes_downloaded if encoded else size
                if expected is not None and got < expected:
                    raise ShortBody(f"{what}: the body ended after {got} of {expected} bytes")
                out.flush()
                await anyio.to_thread.run_sync(os.fsync, out.fileno())
        except OSError as exc:
            _remove(dest)
            raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        except BaseException:
            _remove(dest)
            raise
        content_type = response.headers.get("content-type")
        content_type = self._scrub(content_type) if content_type else None
        return Downloaded(dest, size, digest.hexdigest(), content_type)


def _create(dest: Path, what: str) -> int:
    """Open ``dest`` to write a regular file there, never through a symlink, into a FIFO, a
    socket or a device, or over a hard link to another file: what someone put at the name is
    refused and left alone (an earlier attempt's own file is truncated)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(dest, flags, 0o666)
    except OSError as exc:
        if exc.errno not in _NOT_A_FILE:
            raise DownloadError(f"cannot write {dest}: {exc.strerror or exc}") from exc
    else:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
            os.set_blocking(fd, True)
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)
    raise DownloadError(f"{what}: {dest} is not a file comfysweep wrote; left alone")


def _remove(path: Path) -> None:
    """Delete a partial file if the file system lets us (a read-only one refuses even that)."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)
