"""input_files and format_of: which files a batch job's input names, and how each is read."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rig_ray.batch.source import format_of, input_files
from rig_ray.errors import BatchInputError


def _touch(folder: Path, *names: str) -> list[str]:
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"prompt": "hi"}\n')
        paths.append(str(path))
    return paths


def _files(source: str) -> list[str]:
    return input_files(source)[1]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.jsonl", "json"),
        ("a.json", "json"),
        ("a.jsonl.gz", "json"),
        ("a.json.gz", "json"),
        ("A.JSONL", "json"),
        ("a.parquet", "parquet"),
        ("dir.v2/a.Parquet", "parquet"),
        ("a.csv", "csv"),
        ("a.csv.gz", "csv"),
        ("a.ndjson", "json"),
        ("a.NDJSON.gz", "json"),
        ("a.tsv", "csv"),
        ("a.tsv.gz", "csv"),
        ("a.txt", None),
        ("a.gz", None),
        ("a.parquet.bak", None),
        ("a.jsonl.zst", None),
        ("jsonl", None),
    ],
)
def test_format_of_reads_the_ending(name: str, kind: str | None) -> None:
    assert format_of(name) == kind


def test_a_single_file_is_read_on_a_local_filesystem(tmp_path: Path) -> None:
    (path,) = _touch(tmp_path, "prompts.jsonl")
    filesystem, files = input_files(path)
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert files == [path]


def test_a_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (path,) = _touch(tmp_path, "data/prompts.csv")
    monkeypatch.chdir(tmp_path)
    assert _files("data/prompts.csv") == [path]
    assert _files("data") == [path]


def test_a_folder_is_searched_recursively_and_sorted(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "b.jsonl", "a.jsonl", "sub/c.jsonl.gz", "sub/deeper/d.json")
    assert _files(str(tmp_path)) == sorted(expected)


def test_a_folder_skips_hidden_files_and_files_that_are_not_input(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "a.parquet", "sub/b.parquet")
    _touch(tmp_path, ".a.parquet", "_SUCCESS", "_b.parquet", "sub/.c.parquet", "README.md")
    assert _files(str(tmp_path)) == sorted(expected)


def test_a_folder_skips_files_inside_hidden_folders(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "a.jsonl")
    _touch(tmp_path, ".cache/b.jsonl", "_temporary/0/c.jsonl")
    assert _files(str(tmp_path)) == expected


def test_a_folder_skips_the_output_folders_of_batch_jobs_inside_it(tmp_path: Path) -> None:
    # `rig-ray batch data/ data/out`: the second run must not read its own parts as input.
    expected = _touch(tmp_path, "a.parquet", "sub/b.parquet")
    _touch(tmp_path, "out/_rig_ray_manifest.json", "out/part-1.parquet")
    _touch(tmp_path, "sub/run/_rig_ray_manifest.json", "sub/run/part-2.parquet", "sub/run/o.jsonl")
    assert _files(str(tmp_path)) == sorted(expected)
    # Named as the input itself, or by a glob, an output folder's parts are read: chaining
    # jobs by hand.
    parts = [str(tmp_path / "out" / "part-1.parquet")]
    assert _files(str(tmp_path / "out")) == parts
    assert _files(f"{tmp_path}/*/part-*.parquet") == parts


def test_a_file_named_explicitly_is_read_even_with_a_leading_underscore(tmp_path: Path) -> None:
    (path,) = _touch(tmp_path, "_train.jsonl")
    assert _files(path) == [path]


def test_a_glob_matches_files_by_pattern(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "part-1.jsonl", "part-2.jsonl")
    _touch(tmp_path, "other.jsonl", "part-3.csv", ".part-4.jsonl")
    assert _files(str(tmp_path / "part-*.jsonl")) == sorted(expected)


def test_a_glob_in_a_folder_name_matches_files_below_it(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "day-1/a.csv", "day-2/b.csv")
    _touch(tmp_path, "night-1/c.csv")
    assert _files(str(tmp_path / "day-?/*.csv")) == sorted(expected)


def test_a_glob_star_does_not_reach_into_subfolders(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "a.jsonl")
    _touch(tmp_path, "sub/b.jsonl")
    assert _files(str(tmp_path / "*.jsonl")) == expected


def test_a_glob_that_matches_nothing_is_a_batch_input_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jsonl")
    source = str(tmp_path / "*.parquet")
    with pytest.raises(BatchInputError, match="no input files") as caught:
        input_files(source)
    assert caught.value.source == source


def test_a_file_uri_is_read_on_the_local_filesystem(tmp_path: Path) -> None:
    (path,) = _touch(tmp_path, "prompts.parquet")
    filesystem, files = input_files(Path(path).as_uri())
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert files == [path]


def test_a_file_uri_of_a_folder_lists_it(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "a.csv", "b.csv")
    assert _files(tmp_path.as_uri()) == sorted(expected)


def test_a_path_that_does_not_exist_is_a_batch_input_error(tmp_path: Path) -> None:
    source = str(tmp_path / "missing.jsonl")
    with pytest.raises(BatchInputError, match="does not exist") as caught:
        input_files(source)
    assert caught.value.source == source


def test_an_empty_folder_is_a_batch_input_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    source = str(tmp_path / "empty")
    with pytest.raises(BatchInputError, match="no input files") as caught:
        input_files(source)
    assert caught.value.source == source


def test_a_folder_of_only_other_files_is_a_batch_input_error(tmp_path: Path) -> None:
    _touch(tmp_path, "notes.txt", ".hidden.jsonl")
    with pytest.raises(BatchInputError, match="no input files"):
        input_files(str(tmp_path))


def test_mixed_formats_are_a_batch_input_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jsonl", "b.parquet")
    with pytest.raises(BatchInputError, match="mixes formats") as caught:
        input_files(str(tmp_path))
    assert "json, parquet" in str(caught.value)
    assert caught.value.source == str(tmp_path)


def test_json_and_jsonl_files_count_as_one_format(tmp_path: Path) -> None:
    expected = _touch(tmp_path, "a.json", "b.jsonl", "c.jsonl.gz")
    assert _files(str(tmp_path)) == sorted(expected)


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.jsonl.zst"])
def test_a_file_with_an_unknown_ending_is_a_batch_input_error(tmp_path: Path, name: str) -> None:
    (path,) = _touch(tmp_path, name)
    with pytest.raises(BatchInputError, match="cannot tell the format") as caught:
        input_files(path)
    assert name in str(caught.value)


def test_a_glob_that_matches_an_unknown_ending_is_a_batch_input_error(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jsonl", "a.txt")
    with pytest.raises(BatchInputError, match="cannot tell the format"):
        input_files(str(tmp_path / "a.*"))


def test_json_lines_split_on_newlines_only() -> None:
    """Inside a JSON string, U+2028, U+2029 and U+0085 may stand unescaped: they end no line
    of a JSON Lines file (str.splitlines would cut the line there). \\r\\n endings work."""
    from rig_ray.batch.json_input import json_rows

    texts = ["one\u2028two", "three\u2029four", "five\u0085six"]
    data = "\r\n".join(
        json.dumps({"id": n, "text": s}, ensure_ascii=False) for n, s in enumerate(texts)
    )
    rows = json_rows(data.encode(), "id")
    assert [(row["id"], row["text"]) for row in rows] == [(str(n), s) for n, s in enumerate(texts)]


def _read(data: bytes, tmp_path: Path, size: int = 1 << 30) -> list[t.Any]:
    """The tables the read tasks of a JSON Lines file of `data` make, in order, in ranges of
    `size` bytes."""
    from rig_ray.batch.json_input import json_parts, read_part

    path = tmp_path / "in.jsonl"
    path.write_bytes(data)
    filesystem = pafs.LocalFileSystem()
    parts = json_parts(filesystem, [str(path)], size=size)
    return [table for part in parts for table in read_part(filesystem, part, "id")]


def test_json_lines_become_tables_a_block_at_a_time_with_one_schema(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A file is turned into Arrow `ROWS_PER_BLOCK` rows at a time (here 2): the tables come
    out with every row's keys and each column widened to hold every value, and an error in a
    later block names the row's place in the whole file."""
    import pyarrow as pa

    from rig_ray.batch import json_values

    monkeypatch.setattr(json_values, "ROWS_PER_BLOCK", 2)
    lines = [{"id": 1, "n": 1}, {"id": 2, "n": 2}, {"id": 3, "n": 2.5, "late": "x"}, {"id": 4}]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    tables = _read(data, tmp_path)
    assert [table.num_rows for table in tables] == [2, 2]
    assert all(table.schema == tables[0].schema for table in tables)
    assert pa.concat_tables(tables).to_pylist() == [
        {"id": "1", "n": 1.0, "late": None},
        {"id": "2", "n": 2.0, "late": None},
        {"id": "3", "n": 2.5, "late": "x"},
        {"id": "4", "n": None, "late": None},
    ]
    lone = data + b'\n{"id": 5, "text": "a\\ud800b"}'  # valid JSON; row 5, in the third block
    with pytest.raises(BatchInputError, match="JSON row 5: column 'text'"):
        _read(lone, tmp_path)
    with pytest.raises(BatchInputError, match="JSON row 5: column 'text'"):
        _read(lone, tmp_path, size=20)  # in ranges of 20 bytes: the error names the same row


def test_an_empty_json_lines_file_is_one_empty_table(tmp_path: Path) -> None:
    tables = _read(b"\n\n", tmp_path)
    assert [table.num_rows for table in tables] == [0]
