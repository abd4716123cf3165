"""Corpus readers: image sources (conformance + per reader) and sentence files."""

from __future__ import annotations

import io
import itertools
import json
import random
import tarfile
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dime_nas.data.corpora import (
    ImageFolder,
    ImageList,
    ImageSource,
    SkipLog,
    TarShards,
    decode_image,
    open_image_corpus,
    open_sentence_corpus,
)

# ------------------------------------------------------------------ image helpers

# Four images told apart by width; written in every supported format.
IMAGES = [("a.png", "PNG", 8), ("b.JPG", "JPEG", 10), ("sub/c.webp", "WEBP", 12), ("sub/deeper/d.Bmp", "BMP", 14)]


def encode(fmt: str, width: int, height: int = 6, noise: bool = False) -> bytes:
    if noise:  # incompressible, so a cut lands inside the pixel data
        im = Image.frombytes("RGB", (width, height), random.Random(0).randbytes(width * height * 3))
    else:
        im = Image.new("RGB", (width, height), (width * 10, 50, 200))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def widths(source: ImageSource) -> list[int]:
    return [decode_image(item.data, source.log, item.key).width for item in source.iter_raw()]


def make_folder(root: Path) -> Path:
    for name, fmt, w in IMAGES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode(fmt, w))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(encode("PNG", 99))
    return root


# ------------------------------------------------- conformance: every ImageSource


@pytest.fixture(params=["folder", "list", "tar"])
def corpus(request, tmp_path):
    """(spec, modify): the same four images through each reader; modify() changes one file."""
    if request.param == "folder":
        root = make_folder(tmp_path / "folder")
        return root, lambda: (root / "a.png").write_bytes(encode("PNG", 8, 9))
    if request.param == "list":
        imgs = make_folder(tmp_path / "imgs")
        (tmp_path / "lists").mkdir()
        lines = ["# four images", ""] + [f"../imgs/{name}" for name, _, _ in IMAGES]
        lst = tmp_path / "lists" / "images.lst"
        lst.write_text("\n".join(lines) + "\n")
        return lst, lambda: (imgs / "a.png").write_bytes(encode("PNG", 8, 9))
    members = [(f"{i:04d}{Path(n).suffix}", encode(fmt, w)) for i, (n, fmt, w) in enumerate(IMAGES)]
    extras = [("0000.json", b'{"w": 8}'), ("0000.txt", b"caption")]
    write_tar(tmp_path / "s-000.tar", members[:1] + extras + members[1:2])
    write_tar(tmp_path / "s-001.tar", members[2:])
    return str(tmp_path / "s-{000..001}.tar"), lambda: write_tar(tmp_path / "s-001.tar", members[3:])


def test_reads_every_image_in_the_same_order_twice(corpus):
    spec, _ = corpus
    source = open_image_corpus(spec)
    first = list(source.iter_raw())
    assert first == list(open_image_corpus(spec).iter_raw())
    assert widths(source) == [8, 10, 12, 14]
    assert source.count() == 4 and source.log.images_read == 4
    assert [item.index for item in first] == [0, 1, 2, 3]
    assert len({item.key for item in first}) == 4


def test_start_yields_exactly_the_tail(corpus):
    source = open_image_corpus(corpus[0])
    full = list(source.iter_raw())
    for k in range(len(full) + 2):
        assert list(source.iter_raw(start=k)) == [item for item in full if item.index >= k]


def test_identity_is_stable_json_and_changes_with_a_file(corpus):
    spec, modify = corpus
    before = open_image_corpus(spec).identity()
    assert json.loads(json.dumps(before)) == before == open_image_corpus(spec).identity()
    modify()
    assert open_image_corpus(spec).identity() != before


# ------------------------------------------------------------------ image readers


def test_folder_is_recursive_sorted_case_insensitive_and_ignores_other_files(tmp_path):
    source = open_image_corpus(make_folder(tmp_path))
    assert isinstance(source, ImageFolder)
    assert [item.key for item in source.iter_raw()] == [name for name, _, _ in IMAGES]
    assert [item.key for item in ImageFolder(tmp_path, extensions=["PNG"]).iter_raw()] == ["a.png"]


def test_folder_identity_changes_on_add_and_remove(tmp_path):
    make_folder(tmp_path)
    base = ImageFolder(tmp_path).identity()
    (tmp_path / "sub" / "e.jpeg").write_bytes(encode("JPEG", 16))
    added = ImageFolder(tmp_path).identity()
    (tmp_path / "a.png").unlink()
    removed = ImageFolder(tmp_path).identity()
    assert len({json.dumps(i, sort_keys=True) for i in (base, added, removed)}) == 3
    assert ImageFolder(tmp_path, extensions=[".png"]).identity() != removed  # options count too


def test_corrupt_and_truncated_images_are_skipped_and_counted(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "bad.png").write_bytes(random.Random(1).randbytes(300))
    (tmp_path / "cut.png").write_bytes(encode("PNG", 64, 64, noise=True)[:2000])
    source = open_image_corpus(tmp_path)
    decoded = {item.key: decode_image(item.data, source.log, item.key) for item in source.iter_raw()}
    assert decoded["bad.png"] is None and decoded["cut.png"] is None
    assert all(im.mode == "RGB" for k, im in decoded.items() if k not in ("bad.png", "cut.png"))
    assert source.log.images_read == 4
    assert source.log.images_skipped == {"decode_error": 2}
    assert {e[0] for e in source.log.examples} == {"bad.png", "cut.png"}


def test_decode_gives_rgb_for_palette_transparency_and_none_for_empty():
    im = Image.new("P", (4, 4))
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    assert decode_image(buf.getvalue()).mode == "RGB"
    assert decode_image(b"") is None


def test_list_file_resolves_against_its_folder_and_counts_missing_and_repeats(tmp_path, monkeypatch):
    make_folder(tmp_path / "imgs")
    lst = tmp_path / "lists" / "l.txt"
    lst.parent.mkdir()
    lines = ["# comment", "../imgs/a.png", "", "  ../imgs/gone.png  ", "../imgs/./a.png", str(tmp_path / "imgs/b.JPG")]
    lst.write_text("\n".join(lines))
    monkeypatch.chdir(tmp_path / "imgs" / "sub")  # relative entries must not depend on cwd
    source = open_image_corpus(lst)
    assert isinstance(source, ImageList) and source.count() == 4
    assert [(i.index, i.key) for i in source.iter_raw()] == [(0, "../imgs/a.png"), (3, str(tmp_path / "imgs/b.JPG"))]
    assert source.log.images_skipped == {"missing_file": 1, "duplicate_entry": 1}
    assert [e[0] for e in source.log.examples] == ["../imgs/gone.png", "../imgs/./a.png"]


def test_tar_truncated_member_and_shard_are_counted_and_later_shards_read(tmp_path):
    big = encode("PNG", 64, 64, noise=True)
    write_tar(tmp_path / "s-000.tar", [("0.png", encode("PNG", 8)), ("0.json", b"{}"), ("1.png", big)])
    data = (tmp_path / "s-000.tar").read_bytes()
    (tmp_path / "s-000.tar").write_bytes(data[: data.index(big[:64]) + len(big) // 2])  # cut inside 1.png
    write_tar(tmp_path / "s-001.tar", [("2.bmp", encode("BMP", 10))])
    source = open_image_corpus(tmp_path / "s-*.tar")
    assert widths(source) == [8, 10]
    assert source.log.images_skipped == {"truncated_member": 1, "truncated_shard": 1}
    assert [e[0] for e in source.log.examples] == [f"{tmp_path}/s-000.tar/1.png", f"{tmp_path}/s-000.tar"]


def test_tar_cut_inside_a_header_or_garbage_is_counted(tmp_path):
    write_tar(tmp_path / "a.tar", [("0.png", encode("PNG", 8)), ("1.png", encode("PNG", 10))])
    data = (tmp_path / "a.tar").read_bytes()
    second_header = 512 + ((len(encode("PNG", 8)) + 511) // 512) * 512
    (tmp_path / "a.tar").write_bytes(data[: second_header + 100])  # tarfile alone ends silently here
    (tmp_path / "b.tar").write_bytes(random.Random(2).randbytes(3000))
    source = open_image_corpus([tmp_path / "a.tar", tmp_path / "b.tar"])
    assert widths(source) == [8]
    assert source.log.images_skipped == {"truncated_shard": 1, "corrupt_shard": 1}


def test_tar_start_skips_known_shards_without_opening_them(tmp_path, monkeypatch):
    for s in range(3):
        write_tar(tmp_path / f"s-{s}.tar", [(f"{s}-{i}.png", encode("PNG", 8 + i)) for i in range(2)])
    source = open_image_corpus(str(tmp_path / "s-{0..2}.tar"))
    assert source.count() == 6
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda p, *a, **k: opened.append(Path(p).name) or real_open(p, *a, **k))
    assert [i.index for i in source.iter_raw(start=4)] == [4, 5]
    assert opened == ["s-2.tar"]


def test_shard_patterns_name_what_is_missing(tmp_path):
    write_tar(tmp_path / "s-000.tar", [("0.png", encode("PNG", 8))])
    write_tar(tmp_path / "s-001.tar", [("1.png", encode("PNG", 10))])
    assert isinstance(open_image_corpus(str(tmp_path / "s-{000..001}.tar")), TarShards)
    with pytest.raises(FileNotFoundError, match="s-002.tar"):
        open_image_corpus(str(tmp_path / "s-{000..002}.tar"))
    with pytest.raises(FileNotFoundError, match=r"x-\*.tar"):
        open_image_corpus(str(tmp_path / "x-*.tar"))


def test_factory_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_image_corpus(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere.lst"):
        open_image_corpus(tmp_path / "nowhere.lst")
    (tmp_path / "x.zip").write_bytes(b"")
    with pytest.raises(ValueError, match="x.zip"):
        open_image_corpus(tmp_path / "x.zip")


# ------------------------------------------------------------------ sentences


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_txt_strips_drops_empties_and_duplicates(tmp_path):
    path = write_lines(tmp_path / "s.txt", ["  hello  ", "", "world", "hello", "   ", "World", "world\t"])
    source = open_sentence_corpus(path)
    assert list(source.iter_sentences()) == ["hello", "world", "World"]
    log = source.log
    assert (log.sentences_kept, log.empty_dropped, log.duplicates_dropped, log.bad_lines) == (3, 2, 2, 0)


def test_txt_bad_utf8_line_is_counted_with_its_line_number(tmp_path):
    path = tmp_path / "s.txt"
    path.write_bytes("a\n".encode() + b"b\xff\xfe\n" + b"c\n")
    source = open_sentence_corpus(path)
    assert list(source.iter_sentences()) == ["a", "c"]
    assert source.log.bad_lines == 1 and source.log.examples[0][0] == f"{path}:2"


@pytest.mark.parametrize("suffix,sep", [(".csv", ","), (".tsv", "\t")])
def test_delimited_reads_the_named_column(tmp_path, suffix, sep):
    rows = [["id", "caption"], ["1", "a dog, running"], ["2", "two\nlines"], ["3", ""], ["4"], ["5", "a dog, running"]]
    text = "\n".join(sep.join(f'"{v}"' if ("," in v or "\n" in v) else v for v in row) for row in rows) + "\n"
    path = tmp_path / f"s{suffix}"
    path.write_text(text)
    source = open_sentence_corpus(path, column="caption")
    assert list(source.iter_sentences()) == ["a dog, running", "two\nlines"]
    log = source.log
    assert (log.empty_dropped, log.duplicates_dropped, log.bad_lines) == (1, 1, 1)
    assert log.examples[0][0] == f"{path}:6"  # the short row, by physical line


def test_missing_or_absent_column_errors_list_what_exists(tmp_path):
    csv_path = write_lines(tmp_path / "s.csv", ["id,text", "1,x"])
    with pytest.raises(ValueError, match=r"s\.csv.*'caption'.*\['id', 'text'\]"):
        open_sentence_corpus(csv_path, column="caption")
    with pytest.raises(ValueError, match=r"s\.csv.*column"):
        open_sentence_corpus(csv_path)
    pq_path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"id": [1], "text": ["x"]}), pq_path)
    with pytest.raises(ValueError, match=r"\['id', 'text'\]"):
        open_sentence_corpus(pq_path, column="caption")
    with pytest.raises(ValueError, match="not string"):
        open_sentence_corpus(pq_path, column="id")
    jsonl_path = write_lines(tmp_path / "s.jsonl", ["not json", '{"id": 1, "text": "x"}'])
    with pytest.raises(ValueError, match=r"s\.jsonl:2.*\['id', 'text'\]"):
        open_sentence_corpus(jsonl_path, column="caption")


def test_parquet_reads_across_row_groups(tmp_path):
    path = tmp_path / "s.parquet"
    table = pa.table({"caption": ["a", None, "b", " a ", "c"], "n": [1, 2, 3, 4, 5]})
    pq.write_table(table, path, row_group_size=2)
    assert pq.ParquetFile(path).num_row_groups == 3
    source = open_sentence_corpus(path, column="caption")
    assert list(source.iter_sentences()) == ["a", "b", "c"]
    assert (source.log.empty_dropped, source.log.duplicates_dropped) == (1, 1)


def test_jsonl_bad_lines_are_counted_with_line_and_column(tmp_path):
    lines = ['{"text": "a"}', '{"text": "b"', '{"other": 1}', '{"text": null}', '{"text": 3}', "[1]", "", '{"text": "c"}']
    path = write_lines(tmp_path / "s.jsonl", lines)
    source = open_sentence_corpus(path, column="text")
    assert list(source.iter_sentences()) == ["a", "c"]
    assert source.log.bad_lines == 4 and source.log.empty_dropped == 2
    key, reason, detail = source.log.examples[0]
    assert key == f"{path}:2" and reason == "bad_line" and "column 13" in detail
    assert [e[0].rsplit(":", 1)[1] for e in source.log.examples] == ["2", "3", "5", "6"]


def test_several_files_of_mixed_formats_dedup_across_files(tmp_path):
    txt = write_lines(tmp_path / "a.txt", ["x", "y"])
    jsonl = write_lines(tmp_path / "b.jsonl", ['{"t": "y"}', '{"t": "z"}'])
    source = open_sentence_corpus([txt, jsonl], column="t")
    assert list(source.iter_sentences()) == ["x", "y", "z"]
    assert list(open_sentence_corpus(str(tmp_path / "*.txt")).iter_sentences()) == ["x", "y"]


def test_start_skips_kept_sentences_and_resumed_counts_add_up(tmp_path):
    path = write_lines(tmp_path / "s.txt", ["a", "", "b", "a", "c", " ", "b", "d", "e", "d"])
    full_source = open_sentence_corpus(path)
    full = list(full_source.iter_sentences())
    assert full == ["a", "b", "c", "d", "e"]
    for k in range(len(full) + 2):
        assert list(open_sentence_corpus(path).iter_sentences(start=k)) == full[k:]
    for k in range(len(full) + 1):
        killed, resumed = open_sentence_corpus(path), open_sentence_corpus(path)
        list(itertools.islice(killed.iter_sentences(), k))  # a run killed after k sentences
        list(resumed.iter_sentences(start=k))
        summed = {f: getattr(killed.log, f) + getattr(resumed.log, f) for f in ("sentences_kept", "empty_dropped", "duplicates_dropped")}
        assert summed == {f: getattr(full_source.log, f) for f in summed}


def test_sentence_identity_changes_on_modify_add_remove_and_column(tmp_path):
    a = write_lines(tmp_path / "a.jsonl", ['{"t": "x"}'])
    b = write_lines(tmp_path / "b.jsonl", ['{"t": "y", "u": "z"}'])
    base = open_sentence_corpus([a], column="t").identity()
    assert json.loads(json.dumps(base)) == base == open_sentence_corpus([a], column="t").identity()
    added = open_sentence_corpus([a, b], column="t").identity()
    other_column = open_sentence_corpus([b], column="u").identity()
    removed = open_sentence_corpus([b], column="t").identity()
    write_lines(a, ['{"t": "x2"}'])
    modified = open_sentence_corpus([a], column="t").identity()
    assert len({json.dumps(i) for i in (base, added, other_column, removed, modified)}) == 5


def test_sentence_factory_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        open_sentence_corpus(tmp_path / "nope.txt")
    (tmp_path / "s.xml").write_text("<s/>")
    with pytest.raises(ValueError, match=r"s\.xml.*unsupported"):
        open_sentence_corpus(tmp_path / "s.xml")
    with pytest.raises(ValueError, match="directory"):
        open_sentence_corpus(tmp_path)


line_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\ufeff"), max_size=4)


@settings(max_examples=40, deadline=None)
@given(st.lists(line_text, max_size=12), st.integers(0, 6))
def test_sentences_match_a_dedup_oracle(lines, start):
    expected = list(dict.fromkeys(s.strip() for s in lines if s.strip()))
    with tempfile.TemporaryDirectory() as d:
        path = write_lines(Path(d) / "s.txt", lines)
        source = open_sentence_corpus(path)
        assert list(source.iter_sentences(start=start)) == expected[start:]


def test_skip_log_as_dict_is_json():
    log = SkipLog()
    log.skip_image("k", "decode_error", "boom")
    assert json.loads(json.dumps(log.as_dict()))["images_skipped"] == {"decode_error": 1}
