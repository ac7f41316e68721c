"""Where a dataset lives: a local folder, a ``file://`` or ``http(s)://`` URL, or any fsspec URL.

``--data-dir`` is typed by the user, so its scheme is honoured; the shard names inside ``_info.json`` are
data, checked by :func:`clipood_zoo.data.info.check_shard_name` and only ever *joined* to that location,
never read as a URL or a command of their own. A ``pipe:`` data dir is refused: every shard would be run
through a shell, and there is no need for it with HTTP and fsspec at hand.

HTTP is read with the standard library (no ``curl`` pipe), with bounded retries: a refused or dropped
connection and a 5xx/408/429 answer are retried with exponential back-off, a dropped stream resumes at the
byte it had reached (with a ``Range`` request, or by skipping that many bytes when the server ignores
``Range``); other 4xx answers (404: the shard is not there) fail at once. Other schemes go to fsspec
(``s3://`` with s3fs installed, ``gs://`` with gcsfs, ``memory://``...), which does its own retrying.
"""
from __future__ import annotations

import http.client
import io
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional, Union

from ..errors import ConfigError, DatasetError

Location = Union[Path, str]  # a local folder, or a URL without its trailing '/'
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a remote file: ``attempts`` connections in all, sleeping ``backoff_s * 2**k`` between."""

    attempts: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 60.0


DEFAULT_RETRY = RetryPolicy()


def resolve_location(data_dir: str | os.PathLike) -> Location:
    """``data_dir`` as a local folder (``Path``; ``file://`` URLs become one) or a remote URL (``str``)."""
    text = os.fspath(data_dir)
    scheme = urllib.parse.urlsplit(text).scheme if "://" in text or text.startswith("pipe:") else ""
    if not scheme or len(scheme) == 1:  # a path, or a Windows drive letter
        return Path(text)
    if scheme == "file":
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(text).path))
    if scheme == "pipe":
        raise ConfigError(f"--data-dir {text!r}: 'pipe:' sources are not supported (each shard would run through a "
                          "shell). Serve the shards over HTTP, or give a local folder or an fsspec URL (s3://...).")
    if scheme not in ("http", "https"):
        _fsspec_filesystem(text)  # a clear error now if no filesystem is installed for the scheme
    return text.rstrip("/")


def is_remote(location: Location) -> bool:
    return isinstance(location, str)


def join(location: Location, name: str) -> Location:
    """``name`` (already checked as a plain relative shard name) under ``location``."""
    if isinstance(location, Path):
        return location / name
    return f"{location}/{urllib.parse.quote(name)}"


def _fsspec_filesystem(url: str):
    try:
        import fsspec
    except ImportError:
        raise ConfigError(f"{url}: reading this URL scheme needs fsspec (pip install fsspec and the filesystem's "
                          "package, e.g. s3fs or gcsfs); http(s):// and file:// work without it.") from None
    protocol = urllib.parse.urlsplit(url).scheme
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        raise ConfigError(f"{url}: no fsspec filesystem for {protocol!r} is installed ({e}).") from None


def open_remote(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> BinaryIO:
    """A buffered binary stream of ``url`` (HTTP with retries and resume, else fsspec)."""
    if urllib.parse.urlsplit(url).scheme in ("http", "https"):
        return io.BufferedReader(_HttpStream(url, retry), buffer_size=1 << 20)
    try:
        return _fsspec_filesystem(url).open(url, "rb")
    except FileNotFoundError:
        raise DatasetError(f"{url} does not exist.") from None


def read_remote(url: str, retry: RetryPolicy = DEFAULT_RETRY) -> bytes:
    with open_remote(url, retry) as f:
        return f.read()


class _HttpStream(io.RawIOBase):
    """An HTTP GET read as a file; a failed connect or a dropped stream is retried within ``retry``'s budget."""

    def __init__(self, url: str, retry: RetryPolicy):
        super().__init__()
        self.url, self.retry, self.pos, self.failures = url, retry, 0, 0
        self._response = self._connect(None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            try:
                n = self._response.readinto(buffer)
                if not n and len(buffer) and self._response.length:  # http.client ends a short body silently
                    raise http.client.IncompleteRead(b"", self._response.length)
                self.pos += n
                return n
            except (http.client.HTTPException, OSError) as e:  # IncompleteRead, reset, timeout
                self._response.close()
                self._response = self._connect(e)

    def close(self) -> None:
        if not self.closed and getattr(self, "_response", None) is not None:
            self._response.close()
        super().close()

    def _connect(self, error: Optional[BaseException]) -> http.client.HTTPResponse:
        while True:
            if error is not None:
                self.failures += 1
                if self.failures >= self.retry.attempts:
                    raise DatasetError(f"could not read {self.url}: {self.failures} attempts failed, the last with "
                                       f"{_describe(error)}. Check the server, or retry later.") from None
                time.sleep(self.retry.backoff_s * 2 ** (self.failures - 1))
            headers = {"Range": f"bytes={self.pos}-"} if self.pos else {}
            try:
                response = urllib.request.urlopen(urllib.request.Request(self.url, headers=headers),
                                                  timeout=self.retry.timeout_s)
            except urllib.error.HTTPError as e:
                e.close()
                if e.code not in _RETRY_STATUS:
                    raise DatasetError(f"{self.url}: HTTP {e.code} {e.reason}"
                                       f"{' (the file is not on the server)' if e.code == 404 else ''}. Check the "
                                       "--data-dir URL and that _info.json's shards are served beside it.") from None
                error = e
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                error = e
                continue
            if self.pos and response.status == 200:  # the server ignored Range: skip what was read already
                try:
                    _discard(response, self.pos)
                except (http.client.HTTPException, OSError) as e:
                    response.close()
                    error = e
                    continue
            return response


def _discard(response: http.client.HTTPResponse, n: int) -> None:
    while n:
        chunk = response.read(min(n, 1 << 20))
        if not chunk:
            raise http.client.IncompleteRead(b"", n)
        n -= len(chunk)


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return f"{type(e).__name__}: {e}"
