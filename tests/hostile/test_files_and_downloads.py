"""Trust under hostile input, files and downloads: a URL that is not https, an endless or oversized download,
a digest cache that is stale or tampered with, corrupted-file sets whose files are damaged, padded or not
arrays at all, and a malformed GENERATED.json each end in a clear error, never a traceback, a filled disk or
old numbers for new bytes."""
from __future__ import annotations

import http.server
import io
import json
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from bench.cli import app
from bench.errors import BenchError, CardError, DataError, WeightsError
from bench.families.corruptions.files import LAYOUTS, MARKER, CorruptedFiles
from bench.models import create, load_model_card
from bench.models.weights import download, sha256_cached, sha256_file

MIB = 1 << 20
BODY = b"weights" * 100


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "BENCH_ALLOW_HTTP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- downloads -------------------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, total: int, announce: bool) -> None:
        self.send_response(200)
        if announce:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        try:
            while self.server.sent < total:
                self.wfile.write(b"\0" * MIB)
                self.server.sent += MIB
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/endless.pt":  # 64 MiB, no Content-Length: only a cap stops it early
            self._send(64 * MIB, announce=False)
        elif self.path == "/announced.pt":
            self._send(16 * MIB, announce=True)
        elif self.path == "/to-ftp.pt":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1:9/w.pt")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads, httpd.requests, httpd.sent = True, [], 0
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    httpd.url = lambda name: f"http://127.0.0.1:{httpd.server_address[1]}/{name}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _nothing_kept(cache: Path) -> bool:
    return not (cache / "weights").exists() or not list((cache / "weights").iterdir())


@pytest.mark.parametrize("kind", ["file", "ftp", "data", "plain http without consent"])
def test_only_https_is_downloaded(tmp_path, server, private_cache, kind):
    local = tmp_path / "w.pt"
    local.write_bytes(BODY)
    url = {"file": local.as_uri(), "ftp": "ftp://127.0.0.1:9/w.pt", "data": "data:,weights",
           "plain http without consent": server.url("w.pt")}[kind]
    with pytest.raises(WeightsError, match="refused to download") as err:
        download(url, sha256_file(local))
    assert "https" in err.value.fix and "BENCH_ALLOW_HTTP" in err.value.fix
    assert server.requests == [] and _nothing_kept(private_cache)


def _card(tmp_path: Path, weights: dict) -> Path:
    path = tmp_path / "url-card.yaml"
    path.write_text(yaml.safe_dump({"id": "url-card", "dataset": "digits", "weights": weights,
                                    "architecture": {"name": "small-cnn", "kwargs": {"input_size": 8}}}))
    return path


@pytest.mark.parametrize("url", ["file:///dev/zero", "ftp://example.org/w.pt", "/etc/passwd", "https:///w.pt"])
def test_a_card_naming_a_url_that_is_not_https_is_invalid(tmp_path, url):
    with pytest.raises(CardError, match="weights.url"):
        load_model_card(_card(tmp_path, {"url": url, "sha256": "a" * 64}))


def test_a_redirect_is_checked_like_the_url(server, private_cache, monkeypatch):
    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")
    with pytest.raises(WeightsError, match="refused to download: ftp://127.0.0.1:9/w.pt"):
        download(server.url("to-ftp.pt"), "a" * 64)
    assert _nothing_kept(private_cache)


@pytest.mark.parametrize("cap", ["environment", "card"])
def test_a_download_stops_as_soon_as_it_passes_its_cap(tmp_path, server, private_cache, monkeypatch, cap):
    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")
    with pytest.raises(WeightsError, match=f"stopped downloading {server.url('endless.pt')}: it sent more than "
                                           f"the {MIB} bytes expected"):
        if cap == "environment":
            monkeypatch.setenv("BENCH_DOWNLOAD_MAX_BYTES", str(MIB))
            download(server.url("endless.pt"), "a" * 64)
        else:
            create(_card(tmp_path, {"url": server.url("endless.pt"), "sha256": "a" * 64, "size": MIB}))
    assert server.sent < 32 * MIB, "the client must hang up at the cap, not read the whole stream"
    assert _nothing_kept(private_cache)


def test_a_size_announced_over_the_cap_is_refused_before_reading(server, private_cache, monkeypatch):
    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")
    monkeypatch.setenv("BENCH_DOWNLOAD_MAX_BYTES", str(MIB))
    with pytest.raises(WeightsError, match=f"announces {16 * MIB} bytes, more than the {MIB}") as err:
        download(server.url("announced.pt"), "a" * 64)
    assert "BENCH_DOWNLOAD_MAX_BYTES" in err.value.fix and _nothing_kept(private_cache)


@pytest.mark.parametrize("var, value", [("BENCH_DOWNLOAD_MAX_BYTES", "lots"), ("BENCH_DOWNLOAD_MAX_BYTES", "0"),
                                        ("BENCH_DOWNLOAD_MAX_BYTES", "-5"), ("BENCH_DOWNLOAD_TIMEOUT", "soon"),
                                        ("BENCH_DOWNLOAD_TIMEOUT", "nan"), ("BENCH_DOWNLOAD_TIMEOUT", "inf")])
def test_bad_download_settings_are_clear_errors(server, private_cache, monkeypatch, var, value):
    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")
    monkeypatch.setenv(var, value)
    (private_cache / "w").mkdir(parents=True)
    (private_cache / "w" / "w.pt").write_bytes(BODY)
    with pytest.raises(BenchError, match=f"\\${var} must be a positive number"):
        download(server.url("w.pt"), sha256_file(private_cache / "w" / "w.pt"))


@pytest.mark.parametrize("url", ["endless", "file"])
def test_cifar10_is_downloaded_with_the_same_checks(tmp_path, server, monkeypatch, url):
    tv = pytest.importorskip("torchvision.datasets")
    import bench.data.cifar10 as cifar10

    monkeypatch.setenv("BENCH_ALLOW_HTTP", "1")
    monkeypatch.setattr(cifar10, "ARCHIVE_BYTES", MIB, raising=False)  # before the fix: no such cap
    (tmp_path / "archive").write_bytes(BODY)
    monkeypatch.setattr(tv.CIFAR10, "url", server.url("endless.pt") if url == "endless" else
                        (tmp_path / "archive").as_uri())
    with pytest.raises(DataError, match="stopped downloading" if url == "endless" else "refused to download"):
        cifar10.download_cifar10(tmp_path / "data")
    assert list((tmp_path / "data").rglob("*")) == [] and server.sent < 32 * MIB


# --- the digest cache ------------------------------------------------------------------------------------


def _cifar_files(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "fog.npy", np.random.default_rng(0).integers(0, 256, (5 * n, 32, 32, 3)).astype(np.uint8))
    np.save(folder / "labels.npy", np.tile(np.arange(n), 5).astype(np.uint8))
    return folder


def _cifar_digest(folder: Path) -> str:
    return CorruptedFiles(LAYOUTS["cifar10-c"], folder).digest(["fog"])


@pytest.mark.parametrize("user", ["corruption files", "trained weights"])
def test_a_same_size_rewrite_with_its_mtime_put_back_gets_a_new_digest(tmp_path, user):
    folder = _cifar_files(tmp_path / "CIFAR-10-C")
    path = folder / "fog.npy"
    digest = (lambda: _cifar_digest(folder)) if user == "corruption files" else (lambda: sha256_cached(path))
    before, stat = digest(), path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    with open(path, "r+b") as f:  # in place: the same inode, size and (put back) mtime
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    assert digest() != before


@pytest.mark.parametrize("garbage", [b"garbage", b"", b"A" * 64, b"0" * 63, b"f" * 64 + b"\nmore", "a folder"])
def test_a_tampered_digest_cache_entry_is_recomputed(tmp_path, private_cache, garbage):
    folder = _cifar_files(tmp_path / "CIFAR-10-C")
    genuine = _cifar_digest(folder)
    entries = list((private_cache / "file-digests").iterdir())
    assert entries
    for entry in entries:
        if garbage == "a folder":
            entry.unlink()
            entry.mkdir()
        else:
            entry.write_bytes(garbage)
    assert _cifar_digest(folder) == genuine
    assert sha256_cached(folder / "fog.npy") == sha256_file(folder / "fog.npy")


@pytest.mark.parametrize("name", ["fog.npy", "labels.npy"])
@pytest.mark.parametrize("change", ["padded to 2 GiB", "padded by a byte", "cut by a byte"])
def test_a_file_of_the_wrong_size_is_refused_before_it_is_hashed(tmp_path, name, change):
    folder = _cifar_files(tmp_path / "CIFAR-10-C")
    path = folder / name
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate({"padded to 2 GiB": 2 << 30, "padded by a byte": size + 1, "cut by a byte": size - 1}[change])
    start = time.perf_counter()
    with pytest.raises(DataError, match="cut short or padded") as err:
        _cifar_digest(folder)
    assert time.perf_counter() - start < 1.5 and str(path) in err.value.problem
    with pytest.raises(DataError, match="cut short or padded"):
        CorruptedFiles(LAYOUTS["cifar10-c"], folder).images("fog", 1, torch.tensor([0]), torch.tensor([0]))


# --- labels files and GENERATED.json ---------------------------------------------------------------------


def _npy_with_header(header: str, version: int = 1, data: bytes = b"\0" * 10) -> bytes:
    size = struct.pack("<H" if version == 1 else "<I", len(header))
    return b"\x93NUMPY" + bytes([version, 0]) + size + header.encode("latin1") + data


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, labels=np.tile(np.arange(2), 5).astype(np.uint8))
    return buffer.getvalue()


def _saved(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


LABELS = {
    "pickled objects": lambda: _saved(np.array([{"x": 1}] * 10, dtype=object), allow_pickle=True),
    "truncated": lambda: _saved(np.tile(np.arange(2), 5).astype(np.int64))[:-20],
    "0-d": lambda: _saved(np.array(7, dtype=np.uint8)),
    "floats": lambda: _saved(np.zeros(10, dtype=np.float32)),
    "2-d": lambda: _saved(np.zeros((10, 1), dtype=np.uint8)),
    "huge header": lambda: _npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (10,), }"
                                            + " " * 200_000 + "\n", version=2),
    "header naming no dtype": lambda: _npy_with_header("{'descr': 5, 'fortran_order': False, 'shape': (10,), }\n"),
    "negative shape": lambda: _npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (-10,), }\n"),
    "huge shape": lambda: _npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (10**15,), }\n"),
    "no header end": lambda: b"\x93NUMPY\x01\x00\xff\x00{'descr'",
    "an .npz renamed": _npz,
    "text": lambda: b"0\n1\n0\n1\n",
    "empty": lambda: b"",
}


@pytest.mark.parametrize("kind", LABELS)
def test_a_hostile_labels_file_is_a_clear_data_error(tmp_path, kind):
    folder = _cifar_files(tmp_path / "CIFAR-10-C")
    (folder / "labels.npy").write_bytes(LABELS[kind]())
    for use in ("digest", "images"):
        files = CorruptedFiles(LAYOUTS["cifar10-c"], folder)
        with pytest.raises(DataError) as err:
            files.digest(["fog"]) if use == "digest" else files.images("fog", 1, torch.tensor([0]), torch.tensor([0]))
        assert str(folder / "labels.npy") in err.value.problem, use
        assert "bench data make cifar10-c" in err.value.fix


MARKERS = {
    "not JSON": b"generated, honest",
    "not UTF-8": b"\xff\xfe{\x00",
    "a list": b"[1, 2]",
    "null": b"null",
    "no keys": b"{}",
    "missing keys": json.dumps({"generated_by": "bench data make", "layout": "cifar10-c"}).encode(),
    "another layout's": json.dumps({"generated_by": "bench data make", "layout": "mnist-c", "seed": 0,
                                    "batch_size": 500, "corruptions": []}).encode(),
    "nested too deep": b"[" * 20_000 + b"]" * 20_000,
    "over 64 KiB": json.dumps({"generated_by": "bench data make", "layout": "cifar10-c", "seed": 0,
                               "batch_size": 500, "corruptions": [], "pad": " " * (1 << 16)}).encode(),
    "a folder": None,
}


@pytest.mark.parametrize("kind", MARKERS)
def test_a_malformed_generated_marker_is_a_clear_data_error(tmp_path, kind):
    folder = _cifar_files(tmp_path / "CIFAR-10-C")
    if MARKERS[kind] is None:
        (folder / MARKER).mkdir()
    else:
        (folder / MARKER).write_bytes(MARKERS[kind])
    with pytest.raises(DataError) as err:
        CorruptedFiles(LAYOUTS["cifar10-c"], folder)
    assert str(folder / MARKER) in err.value.problem and "bench data make cifar10-c" in err.value.fix


def test_bench_data_make_over_a_malformed_marker_says_what_to_do(tmp_path, monkeypatch):
    import bench.families.corruptions.files as files_module
    from bench.data import load_dataset

    mnist = load_dataset("mnist", "test")
    small = type(mnist)("mnist", "test", mnist.x[:4], mnist.y[:4], mnist.classes)
    monkeypatch.setattr(files_module, "load_dataset", lambda name, split, root=None: small)
    (tmp_path / "mnist_c-generated").mkdir()
    (tmp_path / "mnist_c-generated" / MARKER).write_text('{"seed": 0')
    result = CliRunner().invoke(app, ["data", "make", "mnist-c", "--data-root", str(tmp_path)])
    assert result.exit_code != 0 and "is not a marker" in result.output and "Traceback" not in result.output
