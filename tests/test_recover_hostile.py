"""`recover` on hostile folders: every odd entry or index is refused up front with one line that
says what is wrong and what to do, never a hang, a traceback or the wrong advice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_recover import refused, release, run

INDEX = "model.safetensors.index.json"
SECOND = "model-00002-of-00002.safetensors"


@pytest.mark.parametrize(
    ("layout", "name"),
    [
        ("safetensors-sharded-noindex", SECOND),
        ("safetensors-sharded", INDEX),
        ("safetensors-sharded", "tokenizer.model"),
        ("safetensors-sharded", "config.json"),
    ],
)
def test_a_fifo_is_refused_without_waiting_for_a_writer(
    layout: str, name: str, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", layout)
    (diff_dir / name).unlink()
    os.mkfifo(diff_dir / name)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / name}: (DIFF_DIR) is not a regular file (a FIFO, socket or device); "
        "remove it, or put the downloaded file in its place",
    )


def test_a_symbolic_link_loop_is_named_as_one(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna")
    os.symlink("loop-b", diff_dir / "loop-a")
    os.symlink("loop-a", diff_dir / "loop-b")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'loop-a'}: (DIFF_DIR) is a symbolic link loop; remove it or point it at "
        "the downloaded file",
    )


@pytest.mark.parametrize("document", ["[1, 2]", '"weights"', "{}", '{"weight_map": []}'])
def test_an_index_that_is_not_an_object_with_a_weight_map_is_refused(
    document: str, tmp_path: Path
) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "safetensors-sharded")
    (diff_dir / INDEX).write_text(document)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / INDEX}: (DIFF_DIR) is not a weight index (a JSON object whose weight_map "
        "maps tensor names to file names); download it again",
    )


@pytest.mark.parametrize("listed", ["../elsewhere/" + SECOND, "/etc/passwd", "..", ""])
def test_an_index_naming_a_file_outside_the_folder_is_refused(listed: str, tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "safetensors-sharded")
    (tmp_path / "elsewhere").mkdir()
    os.replace(diff_dir / SECOND, tmp_path / "elsewhere" / SECOND)
    index = json.loads((diff_dir / INDEX).read_text())
    index["weight_map"] = {k: listed if v == SECOND else v for k, v in index["weight_map"].items()}
    (diff_dir / INDEX).write_text(json.dumps(index))
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / INDEX}: (DIFF_DIR) the index lists {listed!r}, which is not a file name "
        "in this folder (weights are read only from the model's own folder); download the "
        "index again",
    )


def test_an_index_naming_a_file_that_is_not_weights_is_refused(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "safetensors-sharded")
    text = (diff_dir / INDEX).read_text().replace(SECOND, "config.json")
    (diff_dir / INDEX).write_text(text)
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / INDEX}: (DIFF_DIR) the index lists 'config.json', which is not one of "
        "the folder's *.safetensors files; download the index again",
    )


@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_an_empty_weight_file_is_an_unfinished_download(layout: str, tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", layout)
    weights = diff_dir / ("pytorch_model.bin" if layout == "bin" else "model.safetensors")
    weights.write_bytes(b"")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{weights}: (DIFF_DIR) is empty (0 bytes): the download did not finish; download it again",
    )


def test_a_bin_that_is_neither_zip_nor_pickle_is_called_damaged(tmp_path: Path) -> None:
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "bin")
    (diff_dir / "pytorch_model.bin").write_bytes(b"<!DOCTYPE html><html>rate limited</html>")
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'pytorch_model.bin'}: (DIFF_DIR) is not a torch checkpoint (neither a zip "
        "archive nor a pickle; an error page saved in its place?): damaged; download it again",
    )


def test_a_single_file_beside_an_index_of_shards_is_refused(tmp_path: Path) -> None:
    # transformers loads model.safetensors before it looks for an index: with both, which
    # weights the publisher's tool would add is not what the index says.
    diff_dir, base_dir, _ = release(tmp_path, "vicuna", "safetensors-sharded")
    (diff_dir / "model.safetensors").write_bytes((diff_dir / SECOND).read_bytes())
    out = tmp_path / "out"
    refused(
        run(diff_dir, base_dir, out, "--recipe", "vicuna"),
        out,
        f"{diff_dir / 'model.safetensors'}: (DIFF_DIR) is beside {INDEX}, which lists other "
        "files: two downloads mixed (transformers would load this one, the index names "
        "shards); keep one of them",
    )
