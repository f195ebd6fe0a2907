import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from watchgate.protocol.framing import LineReader, Oversized


def read_all(chunks: list[bytes], max_bytes: int) -> list:
    async def run():
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(chunk)
        reader.feed_eof()
        lines = LineReader(reader, max_bytes)
        out = []
        while (line := await lines.readline()) is not None:
            out.append(line)
        return out

    return asyncio.run(run())


def test_lines_split_across_chunks():
    assert read_all([b'{"a":', b"1}\n{", b'"b":2}\n'], 1024) == [b'{"a":1}', b'{"b":2}']


def test_final_line_without_newline_kept():
    assert read_all([b"one\ntwo"], 1024) == [b"one", b"two"]


def test_blank_lines_and_crlf_skipped():
    assert read_all([b"\n\r\none\r\n\n"], 1024) == [b"one"]


def test_64k_line_is_ordinary():
    line = b"x" * (64 * 1024)
    assert read_all([line + b"\n"], 16 * 1024 * 1024) == [line]


def test_oversized_line_reported_then_reading_continues():
    big = b'{"id":7,"data":"' + b"y" * 5000 + b'"}'
    lines = read_all([big[:3000], big[3000:] + b"\nafter\n"], 1000)
    assert isinstance(lines[0], Oversized)
    assert lines[0].size == len(big)
    assert lines[0].head.startswith(b'{"id":7')
    assert lines[0].tail.endswith(b'"}')
    assert lines[1:] == [b"after"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(min_size=1, max_size=50).filter(lambda b: b"\n" not in b and b.strip()), max_size=20),
    st.integers(min_value=1, max_value=40),
)
def test_any_chunking_gives_same_lines(lines, chunk_size):
    data = b"\n".join(lines) + b"\n"
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    expected = [line.rstrip(b"\r") for line in lines]
    assert read_all(chunks, 100) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=12),
    st.integers(min_value=1, max_value=64),
)
def test_oversized_lines_any_chunking(sizes, chunk_size):
    limit = 100
    lines = [bytes([ord("a") + index % 26]) * size for index, size in enumerate(sizes)]
    data = b"\n".join(lines) + b"\n"
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    result = read_all(chunks, limit)
    assert len(result) == len(lines)
    for line, got in zip(lines, result):
        if len(line) > limit:
            assert isinstance(got, Oversized)
            assert got.size == len(line)
        else:
            assert got == line
