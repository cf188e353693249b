"""Text inputs: embedded texts by name, clear errors for bad paths, and held-out text that
no embedded calibration or fine-tuning text overlaps."""

import pytest

from spikec.core.errors import InputError
from spikec.frontend.smollm2 import smollm2_tokenizer
from spikec.text import (
    CALIBRATION_TEXT,
    HELDOUT_TEXT,
    NUMPY_TEXT,
    embedded_names,
    embedded_text,
    read_text,
)


def test_embedded_names_list_the_shipped_texts_but_not_the_notice():
    assert embedded_names() == sorted([CALIBRATION_TEXT, HELDOUT_TEXT, NUMPY_TEXT])


def test_an_embedded_name_reads_the_embedded_text():
    assert read_text(f"embedded:{NUMPY_TEXT}", CALIBRATION_TEXT) == embedded_text(NUMPY_TEXT)
    assert read_text(None, CALIBRATION_TEXT) == embedded_text(CALIBRATION_TEXT)


def test_an_unknown_embedded_name_is_an_error_listing_the_names():
    with pytest.raises(InputError, match="no embedded text 'wiki.txt'") as err:
        read_text("embedded:wiki.txt", CALIBRATION_TEXT)
    assert f"embedded:{NUMPY_TEXT}" in err.value.hint


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_text(tmp_path / "nope.txt", CALIBRATION_TEXT)
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="is empty"):
        read_text(tmp_path / "empty.txt", CALIBRATION_TEXT)


@pytest.mark.parametrize("name", [CALIBRATION_TEXT, NUMPY_TEXT])
def test_calibration_texts_share_no_16_token_window_with_the_heldout_text(name):
    tok = smollm2_tokenizer()
    held = tok(embedded_text(HELDOUT_TEXT), add_special_tokens=False)["input_ids"]
    windows = {tuple(held[i:i + 16]) for i in range(len(held) - 15)}
    ids = tok(embedded_text(name), add_special_tokens=False)["input_ids"]
    assert len(ids) > 7000
    assert not any(tuple(ids[i:i + 16]) in windows for i in range(len(ids) - 15))
