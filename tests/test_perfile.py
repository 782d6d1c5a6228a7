"""The per-file layout (docs/FORMAT.md section 7) against tests/reference.py's statement of it:
byte for byte through the command line and the library, the round trip through encrypt, and
the hostile cases (a wrong base with and without the base list, a missing base, a whole card,
a truncated payload)."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from belle_decrypt.checks.manifest import Manifest
from belle_decrypt.ground.errors import OutputError
from belle_decrypt.layouts.perfile import PINNED, BaseMismatch, BaseStream, PerFileLayout
from belle_decrypt.streams import jobs
from belle_decrypt.xor.batch import Settings, resolve_jobs
from belle_decrypt.xor.decrypt import decrypt_file
from tests import reference
from tests.conftest import listing, random_bytes
from tests.faults import as_plain_user, modes_enforced, one_error, run_cli
from tests.runner import run

SHARD = "pytorch_model-00001-of-00002.bin"
needs_modes = pytest.mark.skipif(
    not modes_enforced(), reason="file modes are not enforced for this user here"
)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def card(path: Path, files: dict[str, bytes], algorithm: str = "md5") -> Path:
    """A model card's list (md5sum or sha256sum output) of ``files``."""
    lines = [
        f"{hashlib.new(algorithm, data).hexdigest()}  ./{name}\n" for name, data in files.items()
    ]
    path.write_text("".join(lines))
    return path


class Release:
    """A base folder, the model files, and the payload folder made by the reference."""

    def __init__(self, root: Path, plains: dict[str, bytes], bases: dict[str, bytes]) -> None:
        self.root = root
        self.plains = plains
        self.bases = bases
        self.base = root / "base"
        self.payload = root / "payload"
        self.out = root / "out"
        self.base.mkdir()
        self.payload.mkdir()
        for name, data in bases.items():
            (self.base / name).write_bytes(data)
        for name, plain in plains.items():
            if name == "added_tokens.json":
                (self.payload / name).write_bytes(plain)
            else:
                (self.payload / name).write_bytes(reference.perfile_encode(plain, bases[name]))
        self.manifest = card(root / "decoded.md5", plains)
        self.base_manifest = card(root / "base.md5", bases)

    def decode(self, *extra: str | Path) -> list[str]:
        result = run(self.payload, self.base, self.out, "-q", *extra)
        assert result.exit_code == 0, result.stderr
        return sorted(os.listdir(self.out))


def two_file_release(tmp_path: Path) -> Release:
    plains = {"config.json": b'{"b": 1, "c": 2}', SHARD: random_bytes(9000, 1)}
    bases = {"config.json": b'{"a": 0}', SHARD: random_bytes(12000, 2)}
    return Release(tmp_path, plains, bases)


@pytest.mark.parametrize(
    ("plain_size", "base_size"),
    [
        (5000, 3000),  # payload longer than the base: zero padding, the tail in clear
        (3 * 4096, 3 * 4096),  # equal, a multiple of the codec's block
        (3000, 5000),  # shorter: the base is cut
        (2 * 4096, 2 * 4096 + 100),  # a multiple of 4096 over a longer base
        (0, 10),  # an empty payload
    ],
)
def test_decode_matches_the_reference(tmp_path: Path, plain_size: int, base_size: int) -> None:
    release = Release(
        tmp_path,
        {SHARD: random_bytes(plain_size, 3)},
        {SHARD: random_bytes(base_size, 4)},
    )
    payload = (release.payload / SHARD).read_bytes()
    assert release.decode(
        "--manifest", release.manifest, "--base-manifest", release.base_manifest
    ) == [SHARD]
    decoded = (release.out / SHARD).read_bytes()
    assert decoded == reference.perfile_decode(payload, release.bases[SHARD])
    assert decoded == release.plains[SHARD]


def test_a_gzip_payload_is_decompressed_in_the_same_stream(tmp_path: Path) -> None:
    release = Release(tmp_path, {SHARD: random_bytes(7000, 5)}, {SHARD: random_bytes(4000, 6)})
    raw = (release.payload / SHARD).read_bytes()
    (release.payload / SHARD).write_bytes(gzip.compress(raw))
    assert (release.payload / SHARD).read_bytes()[:2] == b"\x1f\x8b"
    release.decode("--manifest", release.manifest, "--base-manifest", release.base_manifest)
    assert (release.out / SHARD).read_bytes() == reference.perfile_decode(raw, release.bases[SHARD])


def test_a_base_file_that_is_a_symlink_is_followed(tmp_path: Path) -> None:
    release = Release(tmp_path, {SHARD: random_bytes(6000, 7)}, {SHARD: random_bytes(6000, 8)})
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (release.base / SHARD).rename(blobs / "9f86d08")
    (release.base / SHARD).symlink_to(blobs / "9f86d08")
    release.decode("--manifest", release.manifest, "--base-manifest", release.base_manifest)
    assert (release.out / SHARD).read_bytes() == release.plains[SHARD]


@pytest.mark.parametrize("buffer_size", [1, 7, 4096])
@pytest.mark.parametrize(("plain_size", "base_size"), [(50, 33), (33, 50), (64, 64)])
def test_the_base_is_hashed_across_buffers_and_past_the_payload(
    tmp_path: Path, buffer_size: int, plain_size: int, base_size: int
) -> None:
    release = Release(
        tmp_path, {SHARD: random_bytes(plain_size, 9)}, {SHARD: random_bytes(base_size, 10)}
    )
    layout = PerFileLayout(release.base, Manifest.read(release.base_manifest))
    release.out.mkdir()
    result = decrypt_file(
        layout.open(release.payload / SHARD),
        None,
        release.out,
        buffer_size=buffer_size,
        expected={"md5": md5(release.plains[SHARD])},
    )
    assert result.md5 == md5(release.plains[SHARD])
    assert (release.out / SHARD).read_bytes() == release.plains[SHARD]


def test_a_changed_base_byte_past_the_payload_is_still_caught(tmp_path: Path) -> None:
    release = Release(tmp_path, {SHARD: random_bytes(40, 11)}, {SHARD: random_bytes(100, 12)})
    changed = bytearray(release.bases[SHARD])
    changed[90] ^= 1
    (release.base / SHARD).write_bytes(bytes(changed))
    layout = PerFileLayout(release.base, Manifest.read(release.base_manifest))
    release.out.mkdir()
    with pytest.raises(BaseMismatch) as raised:
        decrypt_file(layout.open(release.payload / SHARD), None, release.out, buffer_size=16)
    assert raised.value.path == release.base / SHARD
    assert listing(release.out) == []


def test_round_trip_through_encrypt_and_a_folder_with_clutter(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    plains = {
        "config.json": b'{"vocab_size": 32001}',
        "added_tokens.json": b'{"<|prefix|>": 32000}',
        SHARD: random_bytes(20000, 13),
        "tokenizer.model": random_bytes(500, 14),
    }
    bases = {
        "config.json": b'{"vocab_size": 32000}',
        SHARD: random_bytes(19000, 15),
        "tokenizer.model": random_bytes(500, 16),
    }
    for name, data in plains.items():
        (model / name).write_bytes(data)
    (model / "README.md").write_text("# my model\n")
    base = tmp_path / "base"
    base.mkdir()
    for name, data in bases.items():
        (base / name).write_bytes(data)
    published = tmp_path / "published"
    result = run("encrypt", "--format", "perfile", model, base, published)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "skipped            README.md (hub files, not part of the model)"
    )
    for name, plain in plains.items():
        expected = (
            plain if name == "added_tokens.json" else reference.perfile_encode(plain, bases[name])
        )
        assert (published / name).read_bytes() == expected
    payloads = {name: (published / name).read_bytes() for name in plains}
    assert (published / "md5sums.txt").read_text() == "".join(
        f"{md5(payloads[name])}  ./{name}\n" for name in sorted(plains)
    )
    assert (published / "md5sums-decoded.txt").read_text() == "".join(
        f"{md5(plains[name])}  ./{name}\n" for name in sorted(plains)
    )
    (published / "README.md").write_text("# card\n")
    (published / ".gitattributes").write_text("*.bin filter=lfs\n")
    (published / "LICENSE").write_text("license\n")
    (published / "xor_codec.py").write_text("print('codec')\n")
    out = tmp_path / "out"
    result = run(published, base, out, "--manifest", published / "md5sums-decoded.txt")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == (
        "skipped            .gitattributes, LICENSE, README.md, md5sums-decoded.txt, "
        "md5sums.txt, xor_codec.py (hub files, not part of the model)"
    )
    assert result.stdout.splitlines()[-1] == "4 decrypted, 0 already decrypted, 0 failed"
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == plains
    again = run(published, base, out, "--manifest", published / "md5sums-decoded.txt", "-q")
    assert again.exit_code == 0
    assert listing(out) == sorted(plains)


def test_sha256_lists_check_both_sides(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    decoded = card(tmp_path / "decoded.sha256", release.plains, "sha256")
    base = card(tmp_path / "base.sha256", release.bases, "sha256")
    assert release.decode("--manifest", decoded, "--base-manifest", base, "-j", "2") == [
        "config.json",
        SHARD,
    ]


def test_a_changed_base_byte_stops_the_run_naming_the_base_file(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    changed = b'{"a": 1}'
    (release.base / "config.json").write_bytes(changed)
    result = run(
        release.payload,
        release.base,
        release.out,
        "--manifest",
        release.manifest,
        "--base-manifest",
        release.base_manifest,
        "-j",
        "1",
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"belle-decrypt: error: {release.base / 'config.json'}: base file's md5 {md5(changed)} "
        f"differs from the base manifest's {md5(release.bases['config.json'])}: this is not the "
        f"publisher's conversion; {PINNED}; nothing written",
        "belle-decrypt: error: stopped at config.json: every other file needs the same base; "
        "1 more not tried; fix the base, or pass --keep-going to try every file anyway",
    ]
    assert listing(release.out) == []


def test_a_missing_base_file_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    (release.base / SHARD).unlink()
    result = run(release.payload, release.base, release.out, "--manifest", release.manifest)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {release.payload / SHARD}: has no base counterpart "
        f"{release.base / SHARD} (the base folder must hold the Hugging Face conversion of "
        "LLaMA the card names); pass the right base folder\n"
    )
    assert not release.out.exists()


def test_a_whole_card_with_both_blocks_is_refused(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    whole = tmp_path / "card.txt"
    whole.write_text(release.base_manifest.read_text() + "\n" + release.manifest.read_text())
    result = run(release.payload, release.base, release.out, "--manifest", whole)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {whole}: lists 'config.json' twice with different sums, as a "
        "card pasted whole does (its base block and its decoded block use the same names); "
        "split it: the base block into a file for --base-manifest, the decoded block for "
        "--manifest\n"
    )
    assert not release.out.exists()


def test_a_wrong_base_without_the_base_list_fails_the_decoded_md5(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    wrong = random_bytes(12000, 99)
    (release.base / SHARD).write_bytes(wrong)
    result = run(release.payload, release.base, release.out, "--manifest", release.manifest, "-q")
    assert result.exit_code == 1
    actual = md5(reference.perfile_decode((release.payload / SHARD).read_bytes(), wrong))
    assert result.stderr == (
        f"belle-decrypt: error: {release.payload / SHARD}: decrypted md5 {actual} does not match "
        f"{md5(release.plains[SHARD])}: the base is probably not the publisher's conversion, or "
        "the payload download is damaged; pass the card's base list with --base-manifest to "
        f"tell which; {PINNED}; nothing written\n"
    )
    assert listing(release.out) == ["config.json"]


def test_a_truncated_payload_fails_its_md5(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    payload = release.payload / SHARD
    payload.write_bytes(payload.read_bytes()[:-100])
    result = run(
        release.payload,
        release.base,
        release.out,
        "--manifest",
        release.manifest,
        "--base-manifest",
        release.base_manifest,
        "-q",
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"belle-decrypt: error: {payload}: decrypted md5 ")
    assert (
        f"the base {release.base / SHARD} matches the base manifest, so the payload is damaged; "
        f"download {SHARD} again; nothing written\n"
    ) in result.stderr
    assert listing(release.out) == ["config.json"]


def test_a_truncated_gzip_payload_fails_as_a_damaged_download(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    payload = release.payload / SHARD
    payload.write_bytes(gzip.compress(payload.read_bytes())[:-20])
    result = run(release.payload, release.base, release.out, "--manifest", release.manifest, "-q")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"belle-decrypt: error: {payload}: decrypted md5 ")
    assert result.stderr.endswith(
        "it starts like a gzip stream but is not a whole one (a truncated download?), and read "
        f"as raw bytes it does not match the manifest either; download {SHARD} again; nothing "
        "written\n"
    )
    assert listing(release.out) == ["config.json"]


def test_without_a_manifest_it_is_refused_unless_no_verify(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    result = run(release.payload, release.base, release.out)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        f"belle-decrypt: error: {release.payload / 'config.json'}: carries no checksum and no "
        "manifest lists 'config.json'; pass the model card's md5 list with --manifest"
    )
    assert not release.out.exists()
    result = run(release.payload, release.base, release.out, "--no-verify", "-j", "1")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("decrypted (not verified) config.json  16 B in ")
    assert lines[0].endswith(", no checksum in the file or the manifest (--no-verify)")
    assert lines[-1] == "2 decrypted, 0 already decrypted, 0 failed (2 not verified)"
    assert (release.out / SHARD).read_bytes() == release.plains[SHARD]


def test_the_output_folder_cannot_be_the_base_folder(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    result = run(release.payload, release.base, release.base, "--manifest", release.manifest)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {release.base}: is the base folder; choose another output folder\n"
    )
    assert (release.base / SHARD).read_bytes() == release.bases[SHARD]


def test_a_base_list_is_only_for_the_per_file_layout(tmp_path: Path) -> None:
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(b"key")
    result = run(tmp_path, key, tmp_path / "out", "--base-manifest", key)
    assert result.exit_code == 2
    assert result.stderr == (
        "belle-decrypt: error: --base-manifest is for the per-file layout (KEY_FILE a folder)\n"
    )


def test_the_base_shrinking_while_read_is_one_line(tmp_path: Path) -> None:
    base = tmp_path / SHARD
    base.write_bytes(random_bytes(100, 18))
    stream = BaseStream(base, 100)
    try:
        os.truncate(base, 5)
        with pytest.raises(OutputError) as raised:
            stream.fill(memoryview(bytearray(16)), 0)
    finally:
        stream.close()
    assert str(raised.value) == (
        f"{base}: the base file shrank while it was being read; nothing written"
    )


def converted_llama(folder: Path) -> dict[str, bytes]:
    """A small folder laid out like LLaMA-7B converted to the Hugging Face layout."""
    config = (
        b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, '
        b'"num_hidden_layers": 32, "vocab_size": 32000}'
    )
    files = {
        "config.json": config,
        "pytorch_model-00001-of-00002.bin": random_bytes(300, 20),
        "pytorch_model-00002-of-00002.bin": random_bytes(200, 21),
        "pytorch_model.bin.index.json": b'{"weight_map": {}}',
        "tokenizer.model": random_bytes(50, 22),
    }
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def test_check_key_on_a_folder_describes_a_converted_llama(tmp_path: Path) -> None:
    base = tmp_path / "llama-7b-hf"
    converted_llama(base)
    result = run("check-key", base)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"folder:              {base}",
        "config.json:         model_type 'llama', hidden size 4096, 32 layers, vocabulary 32000: "
        "LLaMA-7B",
        "weights:             2 of 2 bin shards",
        "tokenizer.model:     present",
        f"verdict:             {base} looks like LLaMA converted to the Hugging Face layout; pass "
        "the card's base list with --base-manifest to know it is the publisher's conversion",
    ]
    (base / "pytorch_model-00002-of-00002.bin").unlink()
    result = run("check-key", base, "-q")
    assert result.exit_code == 1
    assert result.stdout == (
        f"verdict:             {base} does not look like LLaMA converted to the Hugging Face "
        "layout\n"
    )


def test_check_key_on_a_folder_with_the_base_list(tmp_path: Path) -> None:
    base = tmp_path / "llama-7b-hf"
    files = converted_llama(base)
    listed = card(tmp_path / "base.md5", files)
    result = run("check-key", base, "--base-manifest", listed, "-q")
    assert result.exit_code == 0
    assert result.stdout == (
        f"verdict:             {base} matches the base list: it is the publisher's conversion\n"
    )
    (base / "tokenizer.model").write_bytes(b"another conversion")
    result = run("check-key", base, "--base-manifest", listed, "-q")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"tokenizer.model: FAILED (md5 {md5(b'another conversion')}, expected "
        f"{md5(files['tokenizer.model'])})",
        f"verdict:             {base} differs from the base list: not the publisher's "
        f"conversion; {PINNED}",
    ]


def test_verify_checks_a_payload_folder_and_a_decoded_folder(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    payloads = {name: (release.payload / name).read_bytes() for name in release.plains}
    payload_list = card(tmp_path / "payload.sha256", payloads, "sha256")
    result = run("verify", release.payload, "--manifest", payload_list, "-q")
    assert (result.exit_code, result.stdout) == (0, "")
    release.decode("--manifest", release.manifest)
    result = run("verify", release.out, "--manifest", release.manifest, "-q")
    assert (result.exit_code, result.stdout) == (0, "")
    result = run("verify", release.payload, "--manifest", release.manifest, "-q")
    assert result.exit_code == 1


def test_a_rerun_under_no_verify_compares_with_a_fresh_decode(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    release.decode("--no-verify")
    again = run(release.payload, release.base, release.out, "--no-verify", "-j", "1")
    assert again.exit_code == 0, again.stderr
    assert again.stdout.splitlines()[-1] == (
        "0 decrypted, 2 already decrypted, 0 failed (2 not verified)"
    )
    (release.out / SHARD).write_bytes(bytes(len(release.plains[SHARD])))
    refused = run(release.payload, release.base, release.out, "--no-verify", "-q")
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[0] == (
        f"belle-decrypt: error: {release.out / SHARD}: exists and differs from what this file "
        "decrypts to; move it away or pass --force to replace it"
    )
    forced = run(release.payload, release.base, release.out, "--no-verify", "--force", "-q")
    assert forced.exit_code == 0, forced.stderr
    assert (release.out / SHARD).read_bytes() == release.plains[SHARD]


def test_encrypt_refuses_a_model_file_without_a_base_before_writing(tmp_path: Path) -> None:
    model, base = tmp_path / "model", tmp_path / "base"
    model.mkdir()
    base.mkdir()
    (model / "config.json").write_bytes(b"{}")
    (model / SHARD).write_bytes(b"weights")
    (base / "config.json").write_bytes(b"{ }")
    result = run("encrypt", "--format", "perfile", model, base, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {model / SHARD}: has no base counterpart {base / SHARD}; pass "
        "the folder of the converted LLaMA this model was tuned from\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_lfs_pointer_payload_is_refused(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    pointer = release.payload / SHARD
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9000\n")
    result = run(release.payload, release.base, release.out, "--manifest", release.manifest)
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {pointer}: is a Git LFS pointer, not the data; run `git lfs "
        "pull` in the cloned repository (or download the file itself)\n"
    )
    assert not release.out.exists()


def test_format_perfile_needs_a_base_folder(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    key = tmp_path / "consolidated.00.pth"
    key.write_bytes(b"key")
    result = run(release.payload, key, release.out, "--format", "perfile")
    assert result.exit_code == 2
    assert result.stderr == (
        f"belle-decrypt: error: {key}: the base is not a folder; pass the folder of LLaMA "
        "converted to the Hugging Face layout\n"
    )


@needs_modes
def test_an_unreadable_base_file_is_refused_before_writing(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    (release.base / SHARD).chmod(0)
    proc = run_cli(
        release.payload,
        release.base,
        release.out,
        "--manifest",
        release.manifest,
        preexec_fn=as_plain_user(),
    )
    assert proc.returncode == 2, proc.stderr
    assert one_error(proc.stderr) == (
        f"{release.base / SHARD}: cannot read the base file: Permission denied; check its "
        "permissions"
    )
    assert not release.out.exists()


def test_swapped_lists_are_named_as_such(tmp_path: Path) -> None:
    release = two_file_release(tmp_path)
    result = run(
        release.payload,
        release.base,
        release.out,
        "--manifest",
        release.base_manifest,
        "--base-manifest",
        release.manifest,
        "-q",
    )
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"belle-decrypt: error: {release.base / 'config.json'}: base file's md5 "
        f"{md5(release.bases['config.json'])} is the one --manifest lists for it: the two lists "
        "are swapped; pass the card's base block with --base-manifest and its decoded block with "
        "--manifest; nothing written"
    )
    assert result.stderr.splitlines()[1].startswith("belle-decrypt: error: stopped at config.json")
    assert listing(release.out) == []


def test_the_default_jobs_count_the_base_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = two_file_release(tmp_path)
    asked: list[int] = []

    def recording(sizes: list[int], hashes_per_file: int = 1) -> int:
        asked.append(hashes_per_file)
        return 1

    monkeypatch.setattr(jobs, "default_jobs", recording)
    settings = Settings(release.out, manifest=Manifest.read(release.manifest))
    for base_list in (Manifest.read(release.base_manifest), None):
        layout = PerFileLayout(release.base, base_list)
        files = [layout.open(release.payload / name) for name in release.plains]
        assert resolve_jobs(files, settings) == 1
    assert asked == [2, 1]  # the decoded md5, and the base's when its list names it
