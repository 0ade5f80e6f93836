"""ssondo-embed-onnx, the libtorch-free C++ app in cli/: built with CMake as README documents it
(onnxruntime headers fetched by cli/fetch_onnxruntime_headers.py, the library of the installed
onnxruntime wheel), it must give onnxruntime's embeddings in Python and `ssondo embed`'s, and
fail cleanly on bad input.

Skipped only when no C++ compiler or CMake is present, or the headers cannot be obtained (not in
.deps/onnxruntime, which `make test` fills, and the download failed: the reason is shown).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.app_helpers import (ROOT, assert_fails_cleanly, assert_same_embeddings, bad_inputs,
                               export_untrained, needs_toolchain, run_py_embed)

pytestmark = [pytest.mark.app, needs_toolchain]

FETCH = ROOT / "cli" / "fetch_onnxruntime_headers.py"
HEADER = Path("include") / "onnxruntime_cxx_api.h"


def wheel_library() -> Path:
    """The installed onnxruntime wheel's library (README's one-liner)."""
    import onnxruntime.capi as capi

    return next(Path(capi.__path__[0]).glob("libonnxruntime.so.*"))


@pytest.fixture(scope="session")
def headers(tmp_path_factory) -> Path:
    """An onnxruntime root with include/: .deps/onnxruntime, or fetched into a temporary folder."""
    deps = ROOT / ".deps" / "onnxruntime"
    if (deps / HEADER).is_file():
        return deps
    dest = tmp_path_factory.mktemp("ort-headers") / "onnxruntime"
    r = subprocess.run([sys.executable, str(FETCH), str(dest)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"onnxruntime headers unavailable: {r.stderr.strip()}")
    return dest


@pytest.fixture(scope="session")
def app(headers, tmp_path_factory) -> Path:
    """Builds ssondo-embed-onnx exactly as README documents it (no libtorch involved)."""
    build = tmp_path_factory.mktemp("app-onnx-build")
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build), "-DSSONDO_WITH_ONNXRUNTIME=ON",
         f"-DONNXRUNTIME_ROOT={headers}", f"-DONNXRUNTIME_LIBRARY={wheel_library()}"],
        capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    cache = (build / "CMakeCache.txt").read_text()
    assert "Torch_DIR" not in cache  # the ONNX app never looks for libtorch
    made = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert made.returncode == 0, made.stdout + made.stderr
    exe = build / "ssondo-embed-onnx"
    assert exe.is_file()
    return exe


@pytest.fixture(scope="session")
def student_file(tmp_path_factory) -> Path:
    """An (untrained, seeded) mn01 student exported to ONNX with its front end at 32 kHz."""
    return export_untrained("mn01", tmp_path_factory.mktemp("export-onnx"), fmt="onnx")


@pytest.fixture(scope="session")
def wav_files(tmp_path_factory, shared_data) -> list:
    """A real FSDD WAV (8 kHz: resampled to 32 kHz) and a 16 kHz WAV of three notes (4.5 s, so
    three 2 s windows) written with soundfile from the FLAC files."""
    folder = tmp_path_factory.mktemp("wavs-onnx")
    notes = sorted((shared_data / "notes").glob("*.flac"))[:3]
    clips = [sf.read(str(p), dtype="float32") for p in notes]
    assert {sr for _, sr in clips} == {16000}
    path = folder / "notes_16k.wav"
    sf.write(str(path), np.concatenate([a for a, _ in clips]), 16000, subtype="PCM_16")
    return [shared_data / "fsdd" / "3_jackson_0.wav", path]


def onnxruntime_in_python(model: Path, files) -> np.ndarray:
    """The embeddings onnxruntime's Python API gives on the same inputs, resampled by pyssondo."""
    import onnxruntime as ort

    from pyssondo.audio import load_audio

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rows = []
    for path in files:
        wav, _ = load_audio(path, 32000)
        rows.append(session.run(["embedding"], {"wav": wav[None]})[0][0])
    return np.stack(rows)


def test_app_matches_onnxruntime_and_ssondo_embed(app, student_file, wav_files, tmp_path):
    out = tmp_path / "app.npy"
    r = subprocess.run([str(app), str(student_file), *map(str, wav_files), "--threads", "1",
                        "--out", str(out), "-v"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count(" ms (") == len(wav_files)  # -v: one line per file as it is done
    got = np.load(out)
    assert got.shape[0] == len(wav_files)
    assert_same_embeddings(got, onnxruntime_in_python(student_file, wav_files))
    assert_same_embeddings(got, run_py_embed(student_file, wav_files, tmp_path / "py.npy"))


def test_npy_output_equals_stdout(app, student_file, wav_files, tmp_path):
    out = tmp_path / "app.npy"
    subprocess.run([str(app), str(student_file), *map(str, wav_files), "--out", str(out)],
                   check=True, capture_output=True)
    printed = subprocess.run([str(app), str(student_file), *map(str, wav_files)],
                             check=True, capture_output=True, text=True).stdout
    lines = [line.split(" ") for line in printed.strip().splitlines()]
    assert [line[0] for line in lines] == [str(f) for f in wav_files]
    # 9 significant digits round-trip float32 exactly
    np.testing.assert_array_equal(np.array([[float(v) for v in line[1:]] for line in lines],
                                           dtype=np.float32), np.load(out))


def test_bad_audio_fails_with_one_line_and_no_output(app, student_file, wav_files, tmp_path):
    for name, bad in bad_inputs(tmp_path, wav_files[0]).items():
        out = tmp_path / f"out_{name}.npy"
        r = subprocess.run([str(app), str(student_file), str(wav_files[0]), str(bad),
                            "--out", str(out)], capture_output=True, text=True)
        assert_fails_cleanly(r, name, out)


def test_models_that_are_not_ssondo_onnx_exports_are_refused(app, wav_files, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def identity(path: Path, names, meta=None) -> Path:
        """A graph copying input names[0] to each output names[1:]."""
        graph = helper.make_graph(
            [helper.make_node("Identity", [names[0]], [n]) for n in names[1:]], "g",
            [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["B", "T"])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "T"]) for n in names[1:]])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        if meta is not None:
            helper.set_model_props(model, {"ssondo.json": meta})
        onnx.save(model, str(path))
        return path

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    cases = [
        (tmp_path / "absent.onnx", "cannot open model file"),
        (garbage, "not an ONNX model onnxruntime can load"),
        (identity(tmp_path / "plain.onnx", ("wav", "embedding")), "not a ssondo export"),
        (identity(tmp_path / "no_rate.onnx", ("wav", "embedding"), '{"embed_dim": 8}'),
         "bad ssondo.json"),
        (identity(tmp_path / "names.onnx", ("x", "y"), '{"sample_rate": 32000}'),
         "not a ssondo student graph"),
        (identity(tmp_path / "no_segments.onnx", ("wav", "embedding"), '{"sample_rate": 32000}'),
         "not a ssondo student graph"),
        (identity(tmp_path / "no_window.onnx", ("wav", "embedding", "segments"),
                  '{"sample_rate": 32000}'), "bad ssondo.json"),
    ]
    for model, problem in cases:
        out = tmp_path / f"out_{model.stem}.npy"
        r = subprocess.run([str(app), str(model), str(wav_files[0]), "--out", str(out)],
                           capture_output=True, text=True)
        assert_fails_cleanly(r, str(model), out)
        assert problem in r.stderr, r.stderr


def test_header_fetcher_refuses_members_that_leave_dest(tmp_path):
    """Names inside the .deb are untrusted: '..', absolute paths and links are refused; only
    usr/include/onnxruntime/*.h is written, into DEST/include."""
    import importlib.util
    import io
    import tarfile

    spec = importlib.util.spec_from_file_location("fetch_onnxruntime_headers", FETCH)
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)

    def deb(members) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tar:
            for name, kind in members:
                info = tarfile.TarInfo(name)
                if kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size = 4
                    tar.addfile(info, io.BytesIO(b"//h\n"))
        data = buf.getvalue()
        out = b"!<arch>\n"
        for name, body in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", data)):
            out += (name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6)
                    + b"100644".ljust(8) + str(len(body)).encode().ljust(10) + b"`\n")
            out += body + (b"\n" if len(body) % 2 else b"")
        return out

    good = [("./usr/include/onnxruntime/onnxruntime_cxx_api.h", "file"),
            ("./usr/include/onnxruntime/core/providers/resource.h", "file"),
            ("./usr/lib/libonnxruntime.so", "file")]
    include = tmp_path / "ok"
    include.mkdir()
    with fetch.open_data_tar(fetch.ar_members(deb(good), "good.deb"), "good.deb") as tar:
        assert fetch.extract_headers(tar, str(include), "good.deb") == ["onnxruntime_cxx_api.h"]
    assert sorted(p.name for p in include.iterdir()) == ["onnxruntime_cxx_api.h"]

    for evil, kind in (("./usr/include/onnxruntime/../../../../evil.h", "file"),
                       ("/usr/include/onnxruntime/abs.h", "file"),
                       ("./usr/include/onnxruntime/onnxruntime_cxx_api.h", "link")):
        include = tmp_path / f"evil{len(list(tmp_path.iterdir()))}"
        include.mkdir()
        data = deb(good[:1] + [(evil, kind)] if kind == "file" else [(evil, kind)])
        with fetch.open_data_tar(fetch.ar_members(data, "evil.deb"), "evil.deb") as tar:
            with pytest.raises(fetch.FetchError, match="refused"):
                fetch.extract_headers(tar, str(include), "evil.deb")
    assert not (tmp_path.parent / "evil.h").exists()
