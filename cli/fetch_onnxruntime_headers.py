"""Fetches the onnxruntime C/C++ API headers for building cli/ssondo-embed-onnx.

usage: python cli/fetch_onnxruntime_headers.py DEST [--deb FILE]

The onnxruntime wheel ships the library (onnxruntime/capi/libonnxruntime.so.1.*) but no headers.
This script downloads Debian's libonnxruntime-dev 1.21.0 package (headers only; its runtime
package needs a newer glibc and is not used), checks its size and SHA-256, and writes its
usr/include/onnxruntime/*.h to DEST/include/, the layout of an onnxruntime release tarball, so
that CMake's -DONNXRUNTIME_ROOT=DEST finds them. The C API is a versioned, append-only function
table and the C++ API is header-only over it, so 1.21 headers work with a newer library.

Stdlib only. Names inside the archive are not trusted: a member path that is absolute, has a
'..' part, or is not a plain file is refused. Atomic: the headers are written to a temporary
folder next to DEST and renamed into place, so DEST is either complete or absent. With DEST
already complete nothing is downloaded. --deb FILE uses a .deb downloaded before (still
checked). On any failure one line goes to stderr and the exit status is 1.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import urllib.request

URL = ("https://deb.debian.org/debian/pool/main/o/onnxruntime/"
       "libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb")
SIZE = 85340
SHA256 = "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08"
PREFIX = "usr/include/onnxruntime/"
MARKER = "onnxruntime_cxx_api.h"  # DEST/include/MARKER: the headers are there


class FetchError(Exception):
    """A failure explained in one line."""


def download(url: str = URL, timeout: float = 60.0) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read(SIZE + 1)
    except (OSError, ValueError) as e:  # URLError, timeouts and HTTP errors are OSErrors
        raise FetchError(f"cannot download {url}: {getattr(e, 'reason', e)}") from None


def check(data: bytes, source: str) -> None:
    if len(data) != SIZE:
        raise FetchError(f"{source}: {len(data)} bytes, expected {SIZE}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise FetchError(f"{source}: sha256 {digest}, expected {SHA256}")


def ar_members(data: bytes, source: str) -> dict:
    """{name: bytes} of a Unix ar archive (the container of a .deb)."""
    if not data.startswith(b"!<arch>\n"):
        raise FetchError(f"{source}: not an ar archive (.deb)")
    members, pos = {}, 8
    while pos < len(data):
        header = data[pos:pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise FetchError(f"{source}: corrupt ar member header at byte {pos}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise FetchError(f"{source}: corrupt ar member size at byte {pos}") from None
        start = pos + 60
        if start + size > len(data):
            raise FetchError(f"{source}: ar member {name!r} is truncated")
        members[name] = data[start:start + size]
        pos = start + size + (size & 1)  # members are padded to an even offset
    return members


def open_data_tar(members: dict, source: str) -> tarfile.TarFile:
    for name, mode in (("data.tar.xz", "r:xz"), ("data.tar.gz", "r:gz"), ("data.tar", "r:")):
        if name in members:
            return tarfile.open(fileobj=io.BytesIO(members[name]), mode=mode)
    if "data.tar.zst" in members:
        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            raise FetchError(f"{source}: data.tar.zst needs Python >= 3.14 (compression.zstd)"
                             ) from None
        return tarfile.open(fileobj=io.BytesIO(zstd.decompress(members["data.tar.zst"])), mode="r:")
    raise FetchError(f"{source}: no data.tar.* inside (members: {', '.join(members)})")


def safe_name(name: str, source: str) -> str:
    """The member's path without a leading './'; FetchError if it could leave the destination."""
    path = name[2:] if name.startswith("./") else name
    if path.startswith("/") or ".." in path.split("/"):
        raise FetchError(f"{source}: unsafe member path {name!r} refused")
    return posixpath.normpath(path) if path else path


def extract_headers(tar: tarfile.TarFile, include: str, source: str) -> list:
    """Writes PREFIX*.h (files directly under PREFIX) into the folder `include`; their names."""
    written = []
    root = os.path.realpath(include)
    for member in tar.getmembers():
        path = safe_name(member.name, source)
        if not (path.startswith(PREFIX) and path.endswith(".h")):
            continue
        base = path[len(PREFIX):]
        if "/" in base:
            continue  # core/providers/...: not needed by the C/C++ API headers
        if not member.isfile():
            raise FetchError(f"{source}: {member.name!r} is not a plain file, refused")
        target = os.path.realpath(os.path.join(include, base))
        if os.path.dirname(target) != root:
            raise FetchError(f"{source}: member path {member.name!r} would land outside DEST")
        with tar.extractfile(member) as f, open(target, "xb") as out:
            shutil.copyfileobj(f, out)
        written.append(base)
    if MARKER not in written:
        raise FetchError(f"{source}: no {PREFIX}{MARKER} inside")
    return sorted(written)


def fetch(dest: str, deb: str = "") -> str:
    """Puts the headers into dest/include (atomically); returns a one-line summary."""
    dest = os.path.abspath(dest)
    if os.path.isfile(os.path.join(dest, "include", MARKER)):
        return f"{dest}: onnxruntime headers already there"
    if os.path.exists(dest):
        raise FetchError(f"{dest}: exists but holds no include/{MARKER}; remove it first")
    if deb:
        try:
            with open(deb, "rb") as f:
                data = f.read(SIZE + 1)
        except OSError as e:
            raise FetchError(f"{deb}: cannot read ({e.strerror})") from None
        source = deb
    else:
        data, source = download(), URL
    check(data, source)
    with open_data_tar(ar_members(data, source), source) as tar:
        parent = os.path.dirname(dest)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".onnxruntime-headers-", dir=parent)
        try:
            os.mkdir(os.path.join(tmp, "include"))
            names = extract_headers(tar, os.path.join(tmp, "include"), source)
            with open(os.path.join(tmp, "SOURCE"), "w") as f:
                f.write(f"{URL}\nsha256 {SHA256}\n")
            try:
                os.rename(tmp, dest)
            except OSError:
                if not os.path.isfile(os.path.join(dest, "include", MARKER)):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another run put them there first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return f"{dest}: {len(names)} onnxruntime 1.21.0 headers from {os.path.basename(URL)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest", metavar="DEST", help="folder to create; the headers go to DEST/include")
    p.add_argument("--deb", default="", help="use this already downloaded .deb instead")
    args = p.parse_args(argv)
    try:
        print(fetch(args.dest, args.deb))
    except (FetchError, OSError, tarfile.TarError) as e:
        print(f"fetch_onnxruntime_headers: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
