"""Checksummed, resumable download of the public LoDoPaB-CT record (Zenodo record 3384092).

The record lists its files with their size and md5 (Zenodo's API format). Every file is streamed
into ``<name>.part``; a later run resumes it with an HTTP ``Range`` request, and only a file whose
size and md5 match the record is renamed to its final name. The zips are extracted flat into the
destination (``ground_truth_train_000.hdf5``, ``observation_train_000.hdf5``, ...), each member
through a temporary name, and a marker ``.<zip name>.extracted`` (the zip's md5 and its members)
records a complete extraction, so that a second run downloads nothing::

    python -m lightning_recon.data.download lodopab /data/lodopab --splits test
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, Optional, Union

try:
    from tqdm import tqdm
except ImportError:  # progress bars are optional
    tqdm = None

__all__ = ["ZENODO_LODOPAB_API", "DownloadError", "fetch_record", "download_file", "extract_zip",
           "download_lodopab", "main"]

ZENODO_LODOPAB_API = "https://zenodo.org/api/records/3384092"
LODOPAB_SPLITS = ("train", "validation", "test")
LODOPAB_PARTS = ("ground_truth", "observation")
SOCKET_TIMEOUT_S = 60.0
RETRIES = 4
RETRY_DELAY_S = 2.0
CHUNK_BYTES = 1 << 20
# worth another try that resumes; http.client.HTTPException covers IncompleteRead and BadStatusLine
TRANSIENT_ERRORS = (http.client.HTTPException, ConnectionError, TimeoutError, urllib.error.URLError)
RETRYABLE_HTTP_STATUSES = (408, 429)  # besides 5xx: request timeout, too many requests
CORRUPT_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError)


class DownloadError(RuntimeError):
    """A download that cannot complete: network failure, bad record, checksum mismatch, corrupt zip."""


def fetch_record(record_url: str) -> list[dict]:
    """The files of a Zenodo record: a list of ``dict(name, url, size, md5)``."""
    try:
        with urllib.request.urlopen(record_url, timeout=SOCKET_TIMEOUT_S) as response:
            body = response.read()
    except (OSError, http.client.HTTPException, ValueError) as error:  # ValueError: a malformed URL
        raise DownloadError(f"cannot read the record {record_url}: {error}") from None
    try:
        record = json.loads(body)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise DownloadError(f"the record {record_url} is not JSON: {error}") from None
    try:
        files = []
        for entry in record["files"]:
            algorithm, _, digest = entry["checksum"].partition(":")
            if algorithm != "md5" or not digest:
                raise ValueError(f"{entry['key']} has checksum {entry['checksum']!r}, expected 'md5:<hex>'")
            files.append({"name": entry["key"], "url": urllib.parse.urljoin(record_url, entry["links"]["self"]),
                          "size": int(entry["size"]), "md5": digest.lower()})
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DownloadError(f"the record {record_url} is not in Zenodo's format "
                            f"(files: key, size, checksum, links.self): {error!r}") from None
    if not files:
        raise DownloadError(f"the record {record_url} lists no files")
    return files


def file_md5(path: Path) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _progress_bar(name: str, total: Optional[int], initial: int, enabled: bool):
    """A tqdm bar in bytes, or None when disabled or tqdm is not installed."""
    if not enabled or tqdm is None:
        return None
    return tqdm(total=total, initial=initial, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                leave=False, dynamic_ncols=True)


def _content_range_start(header: Optional[str]) -> Optional[int]:
    """First byte of ``Content-Range: bytes START-END/TOTAL``, None when absent or malformed."""
    try:
        return int(header.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def _transfer(url: str, part: Path, size: Optional[int], progress: bool) -> None:
    """One request appending to ``part`` from its current length (``Range``), or rewriting it
    when the server sends the whole file; raises ``IncompleteRead`` when the body stops short."""
    name = part.name.removesuffix(".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=SOCKET_TIMEOUT_S) as response:
        if offset and response.status != 206:
            offset = 0  # the server ignored the range: start again from the first byte
        elif offset and _content_range_start(response.headers.get("Content-Range")) != offset:
            raise DownloadError(f"{name}: asked for bytes from {offset}, the server answered "
                                f"Content-Range {response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        expected_end = offset + int(length) if length is not None else size
        bar = _progress_bar(name, expected_end, offset, progress)
        received = offset
        try:
            with open(part, "ab" if offset else "wb") as out:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    # http.client returns b"" rather than raising when the connection closes early
    if length is not None and received < expected_end:
        raise http.client.IncompleteRead(b"", expected_end - received)


def download_file(url: str, dest: Union[str, Path], md5: str, size: Optional[int] = None,
                  progress: bool = True) -> bool:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` left by an earlier
    run and retrying a dropped connection; verify size and md5, then rename atomically.

    Returns False when ``dest`` already held the right file (nothing downloaded), True otherwise.
    """
    dest = Path(dest)
    md5 = md5.lower()
    if dest.is_file() and (size is None or dest.stat().st_size == size) and file_md5(dest) == md5:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.exists() and size is not None and part.stat().st_size > size:
        part.unlink()
    for attempt in range(RETRIES + 1):
        if part.exists() and size is not None and part.stat().st_size == size:
            break  # complete already (a Range request would be answered 416)
        try:
            _transfer(url, part, size, progress)
            break
        except urllib.error.HTTPError as error:
            if error.code == 416:  # range not satisfiable: the .part is unusable
                part.unlink(missing_ok=True)
            elif error.code < 500 and error.code not in RETRYABLE_HTTP_STATUSES:
                raise DownloadError(f"{dest.name}: {url} answered HTTP {error.code} {error.reason}") from None
            last_error = error
        except TRANSIENT_ERRORS as error:
            last_error = error
        if attempt == RETRIES:
            raise DownloadError(f"{dest.name}: download failed after {RETRIES + 1} attempts "
                                f"({last_error!r}); run again to resume") from None
        time.sleep(RETRY_DELAY_S * (attempt + 1))
    got_size = part.stat().st_size
    if size is not None and got_size != size:
        part.unlink()
        raise DownloadError(f"{dest.name}: size mismatch: expected {size} bytes, got {got_size}")
    got_md5 = file_md5(part)
    if got_md5 != md5:
        part.unlink()
        raise DownloadError(f"{dest.name}: checksum mismatch: expected md5 {md5}, got {got_md5}")
    os.replace(part, dest)
    return True


def extract_zip(archive: Path, dest: Path) -> list[str]:
    """Extract the files of ``archive`` flat into ``dest`` (directories inside the zip dropped),
    each through ``<name>.extracting`` then a rename. On a corrupt zip, the zip and whatever this
    call extracted from it are deleted and ``DownloadError`` is raised. Returns the member names."""
    written: list[Path] = []
    temporary: Optional[Path] = None
    try:
        with zipfile.ZipFile(archive) as zip_file:
            for member in zip_file.infolist():
                name = Path(member.filename).name  # flat, and no path outside dest
                if member.is_dir() or not name:
                    continue
                target = dest / name
                temporary = target.with_name(name + ".extracting")
                with zip_file.open(member) as source, open(temporary, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK_BYTES)
                os.replace(temporary, target)
                temporary = None
                written.append(target)
    except CORRUPT_ZIP_ERRORS as error:
        for path in written:
            path.unlink(missing_ok=True)
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive.name}: corrupt zip ({error}); deleted it, run again to download it anew") \
            from None
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    return [path.name for path in written]


def _extraction_marker(dest: Path, archive_name: str) -> Path:
    return dest / f".{archive_name}.extracted"


def _write_extraction_marker(dest: Path, archive_name: str, md5: str, members: list[str]) -> None:
    """Record a complete extraction: the zip's md5, then its members, one a line (written atomically)."""
    marker = _extraction_marker(dest, archive_name)
    temporary = marker.with_name(marker.name + ".part")
    temporary.write_text("\n".join([md5, *members]) + "\n")
    os.replace(temporary, marker)


def _extracted_already(dest: Path, archive_name: str, md5: str) -> bool:
    """Whether the marker names this md5 and every member it lists is still in ``dest``."""
    marker = _extraction_marker(dest, archive_name)
    if not marker.is_file():
        return False
    recorded_md5, *members = marker.read_text().split("\n")
    return recorded_md5 == md5 and all((dest / member).is_file() for member in members if member)


def download_lodopab(dest: Union[str, Path], record_url: str = ZENODO_LODOPAB_API,
                     splits: Iterable[str] = LODOPAB_SPLITS, parts: Iterable[str] = LODOPAB_PARTS,
                     extract: bool = True, keep_archives: bool = False, progress: bool = True) -> None:
    """Download the chosen LoDoPaB-CT zips and patient-id CSVs into ``dest`` and extract the zips
    flat there (archives deleted after extraction unless ``keep_archives``). What is in place
    already is skipped; one summary line per file is printed."""
    splits, parts = tuple(splits), tuple(parts)
    for kind, chosen, allowed in (("split", splits, LODOPAB_SPLITS), ("part", parts, LODOPAB_PARTS)):
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            raise ValueError(f"unknown LoDoPaB {kind}(s) {unknown}; choose from {list(allowed)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    record = {entry["name"]: entry for entry in fetch_record(record_url)}
    wanted = [f"{part}_{split}.zip" for split in splits for part in parts]
    wanted += [f"patient_ids_rand_{split}.csv" for split in splits]
    missing = [name for name in wanted if name not in record]
    if missing:
        raise DownloadError(f"the record {record_url} does not list {', '.join(missing)}")
    for name in wanted:
        entry = record[name]
        is_zip = name.endswith(".zip")
        if is_zip and extract and _extracted_already(dest, name, entry["md5"]):
            print(f"{name}: skipped (extracted already)", flush=True)
            continue
        downloaded = download_file(entry["url"], dest / name, entry["md5"], entry["size"], progress)
        status = "downloaded, md5 verified" if downloaded else "skipped download (already here, md5 verified)"
        if is_zip and extract:
            _extraction_marker(dest, name).unlink(missing_ok=True)  # stale: its members are rewritten now
            members = extract_zip(dest / name, dest)
            _write_extraction_marker(dest, name, entry["md5"], members)
            if not keep_archives:
                (dest / name).unlink()
            status += f", extracted {len(members)} files"
        print(f"{name}: {status}", flush=True)


HELP_EPILOG = """\
size: most of the record is the train split (observation_train.zip above all: 35,820 sinograms
of 1000 x 513 float32 values, 73 GB uncompressed); dival reports 114.7 GB unpacked and asks for
about 150 GB free. Each zip is deleted once extracted (unless --keep-archives), so the disk needs
room for the unpacked files plus the zip being extracted. --splits test fetches only the test
split (3,553 samples, about 9 GB unpacked).

resuming: every file is checked against the md5 the record lists; an interrupted download
resumes where it stopped when the same command is run again, and files already in place
(an extracted zip is recognised by its marker .<zip name>.extracted) are skipped.

layout: DEST holds the HDF5 files directly (ground_truth_train_000.hdf5, ...,
observation_test_NNN.hdf5) and patient_ids_rand_{train,validation,test}.csv;
DEST is the folder to give as `path` in configs/data/lodopab.yaml.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (``python -m lightning_recon.data.download --help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_recon.data.download", epilog=HELP_EPILOG,
        usage="%(prog)s lodopab DEST [--splits SPLIT ...] [--parts PART ...] [--record-url URL] "
              "[--keep-archives] [--no-extract]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download the public LoDoPaB-CT dataset (Zenodo record 3384092), verify its md5 "
                    "checksums and extract it.")
    parser.add_argument("dataset", choices=["lodopab"], help="the dataset to download")
    parser.add_argument("dest", metavar="DEST", type=Path, help="the folder to download and extract into")
    parser.add_argument("--splits", nargs="+", choices=LODOPAB_SPLITS, default=list(LODOPAB_SPLITS),
                        help="the splits to download (default: all three)")
    parser.add_argument("--parts", nargs="+", choices=LODOPAB_PARTS, default=list(LODOPAB_PARTS),
                        help="ground-truth images, observations (sinograms) or both (default)")
    parser.add_argument("--record-url", default=ZENODO_LODOPAB_API,
                        help=f"the Zenodo API record to read (default: {ZENODO_LODOPAB_API})")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zips after extracting them")
    parser.add_argument("--no-extract", dest="extract", action="store_false",
                        help="download the zips only, without extracting them")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line; returns the exit status (0, 2 on an error, 130 when interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        download_lodopab(args.dest, record_url=args.record_url, splits=args.splits, parts=args.parts,
                         extract=args.extract, keep_archives=args.keep_archives, progress=sys.stderr.isatty())
    except (DownloadError, OSError) as error:
        print(f"download: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("download: error: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
