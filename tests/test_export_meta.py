"""ssondo.json of an exported student: one schema (ExportMeta) for TorchScript, ONNX and merge;
a bad file is one line naming it."""
from __future__ import annotations

import json

import pytest

from pyssondo.export_meta import FORMAT, ExportMeta

GOOD = {"format": FORMAT, "version": 1, "sample_rate": 16000, "embed_dim": 32,
        "segment_samples": 16000, "params": 1234, "torch_version": "2.13.0", "int8": False,
        "projected": False, "pooling": "mean over windows weighted by real samples",
        "mel": {"n_mels": 64}, "teacher": {"name": "x"}}


def test_round_trip_keeps_every_key_and_leaves_out_none():
    meta = ExportMeta.from_json(json.dumps(GOOD), "s.pt")
    assert meta.sample_rate == 16000 and meta.teacher == {"name": "x"} and meta.merge is None
    assert json.loads(meta.to_json()) == GOOD  # no None keys written
    assert ExportMeta.from_dict(meta.to_dict(), "s.pt") == meta


@pytest.mark.parametrize("change, words", [
    ({"sample_rate": "fast"}, "'sample_rate' is 'fast'"),
    ({"embed_dim": 0}, "'embed_dim' is 0"),
    ({"segment_samples": True}, "'segment_samples' is True"),
    ({"int8": "yes"}, "'int8' is 'yes'"),
    ({"format": "other"}, "not an exported student"),
    ({"version": 2}, "schema version 2 is newer than this ssondo's (1)"),
])
def test_bad_fields_name_the_file_and_the_field(change, words):
    with pytest.raises(ValueError) as e:
        ExportMeta.from_dict({**GOOD, **change}, "/x/s.pt")
    assert str(e.value).startswith("/x/s.pt: ssondo.json") and words in str(e.value)
    assert "\n" not in str(e.value)


def test_not_json_names_the_file():
    with pytest.raises(ValueError, match=r"^/x/s.onnx: ssondo.json is not valid JSON$"):
        ExportMeta.from_json("{", "/x/s.onnx")
    with pytest.raises(ValueError, match="not a JSON object"):
        ExportMeta.from_json("[1]", "/x/s.onnx")


def test_keys_a_newer_ssondo_added_are_skipped():
    meta = ExportMeta.from_dict({**GOOD, "colour": "red"}, "/x/s.pt")
    assert meta == ExportMeta.from_dict(GOOD, "/x/s.pt")
