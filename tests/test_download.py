"""lightning_recon.data.download against a local Zenodo stand-in (127.0.0.1, no internet):
checksums, resuming with HTTP Range, flat extraction, corrupt zips and the command line."""
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from lightning_recon.data import download
from lightning_recon.data.download import DownloadError, download_file, download_lodopab, fetch_record

REPO_ROOT = Path(__file__).resolve().parents[1]


def hdf5_bytes(tmp_path: Path, name: str, array: np.ndarray) -> bytes:
    """An HDF5 file with one dataset ``data``, as bytes."""
    path = tmp_path / name
    with h5py.File(path, "w") as file:
        file.create_dataset("data", data=array)
    return path.read_bytes()


def zip_bytes(members: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def lodopab_test_split(tmp_path_factory):
    """The test split of a miniature LoDoPaB record: {member name: array} and {file name: bytes}."""
    tmp_path = tmp_path_factory.mktemp("made")
    rng = np.random.default_rng(0)
    arrays = {"ground_truth_test_000.hdf5": rng.random((2, 8, 8), dtype=np.float32),
              "ground_truth_test_001.hdf5": rng.random((2, 8, 8), dtype=np.float32),
              "observation_test_000.hdf5": rng.random((2, 10, 6), dtype=np.float32)}
    members = {name: hdf5_bytes(tmp_path, name, array) for name, array in arrays.items()}
    files = {"ground_truth_test.zip": zip_bytes({name: data for name, data in members.items()
                                                 if name.startswith("ground_truth")}),
             "observation_test.zip": zip_bytes({name: data for name, data in members.items()
                                                if name.startswith("observation")}),
             "patient_ids_rand_test.csv": b"0\n0\n"}
    return arrays, files


class FakeZenodo:
    """What the handler serves: ``/record`` (Zenodo API JSON of ``files``), ``/bad-record`` (the same
    with every md5 wrong), ``/files/<name>`` with Range support, and raw ``documents``."""

    def __init__(self, files: dict):
        self.files = dict(files)
        self.listed_md5: dict = {}  # name -> md5 the record claims, when not the true one
        self.documents: dict = {}
        self.cut_once: dict = {}  # name -> bytes sent before the connection drops, next request only
        self.ignore_range = False
        self.requests: list = []  # (path, Range header or None)
        self.base_url = ""

    def record(self, wrong_md5: bool) -> bytes:
        entries = [{"key": name, "size": len(data),
                    "checksum": "md5:" + ("0" * 32 if wrong_md5 else self.listed_md5.get(name, md5(data))),
                    "links": {"self": f"{self.base_url}/files/{name}"}}
                   for name, data in self.files.items()]
        return json.dumps({"id": 3384092, "files": entries}).encode()

    def file_requests(self, name: str) -> list:
        return [range_header for path, range_header in self.requests if path == f"/files/{name}"]


def make_handler(zenodo: FakeZenodo):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def send_body(self, status: int, body: bytes, headers=()):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for key, value in headers:
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            range_header = self.headers.get("Range")
            zenodo.requests.append((self.path, range_header))
            if self.path in ("/record", "/bad-record"):
                return self.send_body(200, zenodo.record(wrong_md5=self.path == "/bad-record"))
            if self.path in zenodo.documents:
                return self.send_body(200, zenodo.documents[self.path])
            name = self.path.removeprefix("/files/")
            if name not in zenodo.files:
                return self.send_body(404, b"not found")
            data = zenodo.files[name]
            if name in zenodo.cut_once:  # promise the whole file, send the start, hang up
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:zenodo.cut_once.pop(name)])
                self.close_connection = True
                return
            if range_header and not zenodo.ignore_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self.send_body(416, b"", [("Content-Range", f"bytes */{len(data)}")])
                content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self.send_body(206, data[start:], [("Content-Range", content_range)])
            return self.send_body(200, data)

    return Handler


@pytest.fixture
def zenodo(lodopab_test_split):
    """A FakeZenodo serving the miniature test split on 127.0.0.1 (a free port) in a thread."""
    fake = FakeZenodo(lodopab_test_split[1])
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(fake))
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(download, "RETRY_DELAY_S", 0.0)


def test_full_download_extracts_flat_and_a_second_run_downloads_nothing(zenodo, lodopab_test_split, tmp_path,
                                                                        capsys):
    arrays, files = lodopab_test_split
    dest = tmp_path / "lodopab"
    download_lodopab(dest, record_url=zenodo.base_url + "/record", splits=["test"], progress=False)

    assert sorted(p.name for p in dest.iterdir() if not p.name.startswith(".")) == sorted(
        [*arrays, "patient_ids_rand_test.csv"])  # flat, archives deleted, no .part
    for name, array in arrays.items():
        with h5py.File(dest / name, "r") as file:
            np.testing.assert_array_equal(file["data"][()], array)
    assert (dest / "patient_ids_rand_test.csv").read_bytes() == files["patient_ids_rand_test.csv"]
    assert (dest / ".ground_truth_test.zip.extracted").read_text().split("\n")[0] == md5(
        files["ground_truth_test.zip"])
    first = capsys.readouterr().out.splitlines()
    assert len(first) == 3 and "extracted 2 files" in first[0] and "downloaded" in first[2]
    assert len(zenodo.requests) == 4  # the record and three files

    download_lodopab(dest, record_url=zenodo.base_url + "/record", splits=["test"], progress=False)
    assert [path for path, _ in zenodo.requests[4:]] == ["/record"]
    second = capsys.readouterr().out.splitlines()
    assert len(second) == 3 and all("skipped" in line for line in second)

    (dest / "ground_truth_test_001.hdf5").unlink()  # an extracted member gone: that zip again
    download_lodopab(dest, record_url=zenodo.base_url + "/record", splits=["test"], parts=["ground_truth"],
                     progress=False)
    assert [path for path, _ in zenodo.requests[5:]] == ["/record", "/files/ground_truth_test.zip"]
    assert (dest / "ground_truth_test_001.hdf5").is_file()


def test_no_extract_keeps_zips_and_a_later_run_extracts_them_without_downloading(zenodo, tmp_path):
    dest = tmp_path / "lodopab"
    record_url = zenodo.base_url + "/record"
    download_lodopab(dest, record_url=record_url, splits=["test"], parts=["observation"], extract=False,
                     progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["observation_test.zip", "patient_ids_rand_test.csv"]
    download_lodopab(dest, record_url=record_url, splits=["test"], parts=["observation"], keep_archives=True,
                     progress=False)
    assert len(zenodo.file_requests("observation_test.zip")) == 1  # checked by md5, not downloaded again
    assert (dest / "observation_test.zip").is_file() and (dest / "observation_test_000.hdf5").is_file()


def test_dropped_connection_resumes_with_a_range_request(zenodo, lodopab_test_split, tmp_path):
    data = lodopab_test_split[1]["ground_truth_test.zip"]
    url = f"{zenodo.base_url}/files/ground_truth_test.zip"
    zenodo.cut_once["ground_truth_test.zip"] = 1000
    dest = tmp_path / "ground_truth_test.zip"
    assert download_file(url, dest, md5(data), len(data), progress=False) is True  # the built-in retry
    assert zenodo.file_requests("ground_truth_test.zip") == [None, "bytes=1000-"]
    assert dest.read_bytes() == data and not dest.with_name(dest.name + ".part").exists()
    assert download_file(url, dest, md5(data), len(data), progress=False) is False  # in place: skipped
    assert len(zenodo.file_requests("ground_truth_test.zip")) == 2


def test_an_interrupted_run_is_resumed_by_the_next_one(zenodo, lodopab_test_split, tmp_path, monkeypatch):
    data = lodopab_test_split[1]["ground_truth_test.zip"]
    url = f"{zenodo.base_url}/files/ground_truth_test.zip"
    dest, part = tmp_path / "ground_truth_test.zip", tmp_path / "ground_truth_test.zip.part"
    monkeypatch.setattr(download, "RETRIES", 0)
    zenodo.cut_once["ground_truth_test.zip"] = 700
    with pytest.raises(DownloadError, match="ground_truth_test.zip: download failed after 1 attempts"):
        download_file(url, dest, md5(data), len(data), progress=False)
    assert part.stat().st_size == 700 and not dest.exists()
    download_file(url, dest, md5(data), len(data), progress=False)
    assert zenodo.file_requests("ground_truth_test.zip") == [None, "bytes=700-"]
    assert dest.read_bytes() == data and not part.exists()


def test_a_server_ignoring_the_range_restarts_from_zero(zenodo, lodopab_test_split, tmp_path):
    data = lodopab_test_split[1]["ground_truth_test.zip"]
    dest = tmp_path / "ground_truth_test.zip"
    dest.with_name(dest.name + ".part").write_bytes(b"x" * 500)  # would corrupt the file if appended to
    zenodo.ignore_range = True
    download_file(f"{zenodo.base_url}/files/ground_truth_test.zip", dest, md5(data), len(data), progress=False)
    assert zenodo.file_requests("ground_truth_test.zip") == ["bytes=500-"]
    assert dest.read_bytes() == data


def test_a_missing_file_fails_at_once_without_retries(zenodo, tmp_path):
    with pytest.raises(DownloadError, match="^gone.zip: .* answered HTTP 404"):
        download_file(f"{zenodo.base_url}/files/gone.zip", tmp_path / "gone.zip", "0" * 32, 3, progress=False)
    assert zenodo.file_requests("gone.zip") == [None]
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_checksum_is_refused_and_nothing_kept(zenodo, lodopab_test_split, tmp_path):
    zenodo.listed_md5["observation_test.zip"] = "f" * 32
    dest = tmp_path / "lodopab"
    with pytest.raises(DownloadError) as raised:
        download_lodopab(dest, record_url=zenodo.base_url + "/record", splits=["test"], parts=["observation"],
                         progress=False)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("observation_test.zip: checksum mismatch")
    assert "f" * 32 in message and md5(lodopab_test_split[1]["observation_test.zip"]) in message
    assert list(dest.iterdir()) == []


def corrupt_second_member(archive: bytes) -> bytes:
    """A stored zip whose second member's data has one byte flipped (its CRC-32 no longer matches)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as source:
        members = {info.filename: source.read(info) for info in source.infolist()}
    stored = bytearray(zip_bytes(members, zipfile.ZIP_STORED))
    with zipfile.ZipFile(io.BytesIO(bytes(stored))) as reread:
        info = reread.infolist()[1]
    name_length, extra_length = (int.from_bytes(stored[info.header_offset + k:info.header_offset + k + 2], "little")
                                 for k in (26, 28))
    stored[info.header_offset + 30 + name_length + extra_length + info.compress_size // 2] ^= 0xFF
    return bytes(stored)


@pytest.mark.parametrize("corruption", ["not a zip", "bad CRC in the second member"])
def test_a_corrupt_zip_is_refused_deleted_and_nothing_half_extracted_kept(zenodo, lodopab_test_split, tmp_path,
                                                                          corruption):
    good = lodopab_test_split[1]["ground_truth_test.zip"]
    zenodo.files["ground_truth_test.zip"] = b"PK not really a zip" if corruption == "not a zip" \
        else corrupt_second_member(good)  # the record lists the md5 of the corrupt bytes
    dest = tmp_path / "lodopab"
    with pytest.raises(DownloadError, match=r"^ground_truth_test.zip: corrupt zip") as raised:
        download_lodopab(dest, record_url=zenodo.base_url + "/record", splits=["test"], parts=["ground_truth"],
                         progress=False)
    assert "\n" not in str(raised.value)
    assert list(dest.iterdir()) == []  # no zip, .part, .extracting, .hdf5 or marker


def test_fetch_record_reads_zenodo_json_and_refuses_the_rest(zenodo, lodopab_test_split):
    files = lodopab_test_split[1]
    record = fetch_record(zenodo.base_url + "/record")
    assert {entry["name"]: (entry["size"], entry["md5"]) for entry in record} == {
        name: (len(data), md5(data)) for name, data in files.items()}
    assert record[0]["url"] == f"{zenodo.base_url}/files/{record[0]['name']}"

    zenodo.documents["/truncated"] = b'{"files": [{"key": "a.zip"'
    zenodo.documents["/not-zenodo"] = b'{"files": [{"key": "a.zip", "size": 3}]}'
    with pytest.raises(DownloadError, match="is not JSON"):
        fetch_record(zenodo.base_url + "/truncated")
    with pytest.raises(DownloadError, match="not in Zenodo's format"):
        fetch_record(zenodo.base_url + "/not-zenodo")
    with pytest.raises(DownloadError, match="cannot read the record.*404"):
        fetch_record(zenodo.base_url + "/missing")
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot read the record"):
        fetch_record(f"http://127.0.0.1:{closed_port}/record")


def test_command_line_downloads_and_reports_errors_in_one_line(zenodo, lodopab_test_split, tmp_path):
    command = [sys.executable, "-m", "lightning_recon.data.download", "lodopab"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {outcome: subprocess.Popen([*command, str(tmp_path / outcome), "--record-url",
                                       f"{zenodo.base_url}/{record}", "--splits", "test"],
                                      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            for outcome, record in (("good", "record"), ("bad", "bad-record"))}  # both at once: torch imports
    (good_out, good_err), (bad_out, bad_err) = (runs[outcome].communicate(timeout=60) for outcome in ("good", "bad"))

    assert runs["good"].returncode == 0, good_err
    assert sorted(p.name for p in (tmp_path / "good").iterdir() if not p.name.startswith(".")) == sorted(
        [*lodopab_test_split[0], "patient_ids_rand_test.csv"])
    assert len(good_out.splitlines()) == 3
    assert runs["bad"].returncode == 2
    assert len(bad_err.splitlines()) == 1 and bad_err.startswith("download: error: ground_truth_test.zip: checksum")
    assert list((tmp_path / "bad").iterdir()) == []


def test_help_tells_size_resuming_and_layout(capsys):
    with pytest.raises(SystemExit) as exited:
        download.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "150 GB free" in text and "observation_train.zip" in text
    assert "resumes" in text and "configs/data/lodopab.yaml" in text


def test_command_line_turns_os_errors_and_interrupts_into_one_line(zenodo, tmp_path, monkeypatch, capsys):
    (tmp_path / "a-file").write_text("")
    arguments = ["lodopab", str(tmp_path / "a-file" / "lodopab"), "--record-url", zenodo.base_url + "/record"]
    assert download.main(arguments) == 2  # DEST cannot be made under a file
    error = capsys.readouterr().err
    assert len(error.splitlines()) == 1 and error.startswith("download: error: [Errno")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(download, "download_lodopab", interrupted)
    assert download.main(["lodopab", str(tmp_path / "lodopab")]) == 130
    assert capsys.readouterr().err == "download: error: interrupted; run the same command again to resume\n"


def test_an_interrupted_extraction_leaves_no_partial_file_and_is_redone(zenodo, tmp_path, monkeypatch):
    dest = tmp_path / "lodopab"
    record_url = zenodo.base_url + "/record"
    copy = shutil.copyfileobj
    copied = []

    def copy_interrupting_the_second_member(source, target, length):
        copied.append(target)
        if len(copied) == 2:  # Ctrl-C half-way through the second member
            target.write(source.read(100))
            raise KeyboardInterrupt
        copy(source, target, length)
    monkeypatch.setattr(shutil, "copyfileobj", copy_interrupting_the_second_member)
    with pytest.raises(KeyboardInterrupt):
        download_lodopab(dest, record_url=record_url, splits=["test"], parts=["ground_truth"], progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["ground_truth_test.zip", "ground_truth_test_000.hdf5"]

    download_lodopab(dest, record_url=record_url, splits=["test"], parts=["ground_truth"], progress=False)
    assert len(zenodo.file_requests("ground_truth_test.zip")) == 1  # the kept zip is extracted, not fetched
    assert sorted(p.name for p in dest.iterdir()) == [".ground_truth_test.zip.extracted", "ground_truth_test_000.hdf5",
                                                     "ground_truth_test_001.hdf5", "patient_ids_rand_test.csv"]
