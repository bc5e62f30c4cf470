"""Downloads of files that cards or datasets name by URL.

A URL is untrusted input: it may name a local file (``file:///dev/zero``), an endless or slow stream, or
redirect anywhere. So only https is fetched (plain http with $BENCH_ALLOW_HTTP=1), every redirect is checked
the same way, a download has a deadline ($BENCH_DOWNLOAD_TIMEOUT) and a byte cap (the expected size where
known, else $BENCH_DOWNLOAD_MAX_BYTES), and a failed download leaves nothing behind.
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.errors import BenchError
from bench.files import atomic_write


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        number = float(value) if value else default
    except ValueError:
        number = -1.0
    if not number > 0 or number == float("inf"):
        raise BenchError(f"${name} must be a positive number, got {value!r}", f"fix or unset {name}")
    return number


def download_timeout() -> float:
    """Seconds a whole download may take: $BENCH_DOWNLOAD_TIMEOUT, default 30 minutes."""
    return _setting("BENCH_DOWNLOAD_TIMEOUT", 1800)


def max_bytes() -> int:
    """Bytes a download of unknown size may write: $BENCH_DOWNLOAD_MAX_BYTES, default 4 GiB."""
    return int(_setting("BENCH_DOWNLOAD_MAX_BYTES", 4 << 30))


def url_problem(url: str, allow_http: bool) -> str | None:
    """Why ``url`` is not downloaded, or None: https only, plain http only if ``allow_http``, and a host."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "http" and not allow_http:
        return f"{url} is plain http, which anyone on the way can change"
    if parts.scheme not in ("https", "http"):
        return f"{url} is not an https:// URL (only https is downloaded)"
    return None if parts.hostname else f"{url} names no host"


class _Refused(Exception):
    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem, self.fix = problem, fix


def _check(url: str) -> None:
    problem = url_problem(url, allow_http=os.environ.get("BENCH_ALLOW_HTTP") == "1")
    if problem:
        raise _Refused(f"refused to download: {problem}", "use an https URL (set BENCH_ALLOW_HTTP=1 to allow plain "
                                                         "http from a network you trust)")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """A redirect is checked like the URL itself (https -> http, ftp:// and the like are refused)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            _check(newurl)  # already made absolute by urllib
        except _Refused:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _copy(url: str, tmp: Path, cap: int, deadline: float) -> None:
    """Copy in chunks with a progress bar, stopping past ``cap`` bytes or the deadline."""
    from tqdm.auto import tqdm

    too_big = f"more than the {cap} bytes expected"
    opener = urllib.request.build_opener(_Redirects)  # built per download: it reads the proxy settings
    with opener.open(url, timeout=min(60.0, download_timeout())) as response, tmp.open("wb") as out:
        announced = response.headers.get("Content-Length", "")
        if announced.isdigit() and int(announced) > cap:
            raise _Refused(f"refused to download {url}: the server announces {announced} bytes, {too_big}")
        with tqdm(total=int(announced) if announced.isdigit() else None, unit="B", unit_scale=True,
                  desc=f"download {Path(urllib.parse.urlsplit(url).path).name or url}", dynamic_ncols=True) as bar:
            while chunk := response.read1(1 << 20):
                if out.tell() + len(chunk) > cap:
                    raise _Refused(f"stopped downloading {url}: it sent {too_big}")
                out.write(chunk)
                bar.update(len(chunk))
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the download did not finish within {download_timeout():g} s")


def fetch(url: str, target: Path, *, size: int | None, check: Callable[[Path], None], error: type[BenchError],
          fix: str) -> None:
    """Download ``url`` to ``target``, which appears only once ``check`` (e.g. a sha256) accepts the file.
    At most ``size`` bytes (default: $BENCH_DOWNLOAD_MAX_BYTES); failures raise ``error``, ending with ``fix``
    (how to get the file without bench)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        _check(url)
        cap = size or max_bytes()
        deadline = time.monotonic() + download_timeout()
        atomic_write(target, lambda tmp: (_copy(url, tmp, cap, deadline), check(tmp)))
    except _Refused as err:
        hint = err.fix or (f"check the URL (the file should be {size} bytes)" if size else
                           "check the URL, or raise $BENCH_DOWNLOAD_MAX_BYTES if the file really is that large")
        raise error(err.problem, f"{hint}; or {fix}") from None
    except urllib.error.HTTPError as err:
        err.close()  # an HTTPError holds the open response
        raise error(f"could not download {url}: HTTP {err.code} {err.reason}", f"check the URL, or {fix}") from None
    except (OSError, ValueError) as err:  # ValueError: a malformed URL; TimeoutError is an OSError
        raise error(f"could not download {url}: {err}",
                    f"check the network (or raise $BENCH_DOWNLOAD_TIMEOUT), or {fix}") from err
