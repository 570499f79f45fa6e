"""Where each frame of a Motion-JPEG AVI lies, from the file's own index (``idx1``).

OpenCV (through FFmpeg) reads an AVI front to back; when a stretch of the file is damaged it
skips the ruined chunks without a word and numbers the next good frame as if nothing were
missing, so every later frame index and timestamp is off. The index at the end of the file
says where frame N starts, so a reader that follows it keeps true frame numbers and can tell
exactly which frames are ruined. Motion JPEG is the one common AVI codec whose frames decode
on their own (each is a JPEG), so for it the index is all a reader needs.

Only the plain AVI 1.0 layout is understood (RIFF ``AVI `` with ``hdrl``, ``movi`` and
``idx1``); anything else (OpenDML files over 1 GB, other codecs, a missing or damaged index)
gives None and OpenCV reads the file as before.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

_MJPEG = {b"MJPG", b"mjpg", b"AVRn", b"LJPG", b"JPGL", b"dmb1"}


def mjpeg_frame_chunks(path: Path) -> list[tuple[int, int]] | None:
    """(file offset, size) of each video frame of an MJPEG AVI, in order; None when the file
    is not a plain, indexed MJPEG AVI."""
    try:
        with open(path, "rb") as file:
            return _frame_chunks(file)
    except (OSError, struct.error, ValueError):
        return None


def _frame_chunks(file: BinaryIO) -> list[tuple[int, int]] | None:
    if file.read(4) != b"RIFF":
        return None
    file.read(4)
    if file.read(4) != b"AVI ":
        return None
    video_stream: int | None = None
    movi_start: int | None = None  # offset of the 'movi' fourcc, the base of idx1 offsets
    index: bytes | None = None
    while True:
        header = file.read(8)
        if len(header) < 8:
            break
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        start = file.tell()
        if chunk_id == b"LIST":
            kind = file.read(4)
            if kind == b"hdrl":
                video_stream = _mjpeg_stream(file.read(size - 4))
            elif kind == b"movi":
                movi_start = start
        elif chunk_id == b"idx1":
            index = file.read(size)
        file.seek(start + size + (size & 1))  # chunks are padded to an even size
    if video_stream is None or movi_start is None or index is None:
        return None
    wanted = (b"%02ddc" % video_stream, b"%02ddb" % video_stream)
    entries = [struct.unpack_from("<4sIII", index, i) for i in range(0, len(index) - 15, 16)]
    frames = [(offset, size) for chunk_id, _flags, offset, size in entries if chunk_id in wanted]
    if not frames:
        return None
    # Offsets count from the 'movi' fourcc (the usual case) or from the start of the file.
    base = movi_start if _chunk_at(file, movi_start + frames[0][0], wanted) else 0
    if not _chunk_at(file, base + frames[0][0], wanted):
        return None
    return [(base + offset + 8, size) for offset, size in frames]  # past each chunk header


def _mjpeg_stream(header_list: bytes) -> int | None:
    """The number of the first video stream whose codec is Motion JPEG, from 'hdrl'."""
    stream = 0
    position = 0  # walk the sub-chunks of 'hdrl': 'avih', then one 'strl' list per stream
    while position + 8 <= len(header_list):
        chunk_id = header_list[position : position + 4]
        size = struct.unpack_from("<I", header_list, position + 4)[0]
        body = header_list[position + 8 : position + 8 + size]
        if chunk_id == b"LIST" and body[:4] == b"strl":
            strh = body.find(b"strh")
            if strh >= 0 and body[strh + 8 : strh + 12] == b"vids":
                handler = body[strh + 12 : strh + 16]
                strf = body.find(b"strf")
                compression = body[strf + 8 + 16 : strf + 8 + 20] if strf >= 0 else b""
                if handler in _MJPEG or compression in _MJPEG:
                    return stream
            stream += 1
        position += 8 + size + (size & 1)
    return None


def _chunk_at(file: BinaryIO, offset: int, wanted: tuple[bytes, ...]) -> bool:
    file.seek(offset)
    return file.read(4) in wanted
