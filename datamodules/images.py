"""Image files: read sources exactly, encode and decode shard PNGs, pair folders by file stem.

Sources (PNG, JPEG, TIFF; grey or RGB; 8- or 16-bit) are read into ``uint8``/``uint16`` arrays of
shape (H, W) or (H, W, 3) in RGB order, with nothing rounded or converted: that array is what the
shards keep, losslessly, as PNG.

Shard PNGs are ordinary PNG files that any reader opens, written so that a window can be decoded
without decoding the whole image (:func:`encode_png`): every row uses one PNG filter that looks at
no other row (None when stored uncompressed, Sub otherwise), and the deflate stream is fully flushed
every ``block_rows`` rows, whose byte offsets a private ancillary chunk ``ufRX`` records. :func:`decode_png` with a
``window`` then inflates only the blocks that hold the window's rows and undoes the Sub filter only
up to its right edge; a random 256 x 256 crop of a 1024 x 1024 image costs about a quarter of a
full decode. Any other PNG (and JPEG, TIFF) goes through OpenCV and is cropped after decoding.
Chunk CRCs are always checked, so a corrupt member is an error, never silently wrong pixels.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

try:  # ISA-L inflates about twice as fast as zlib; the stream format is the same.
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflate_lib = zlib

cv2.setNumThreads(1)  # decoding runs inside DataLoader workers: one thread each

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INDEX_CHUNK = b"ufRX"  # ancillary, private, unsafe to copy: describes the IDAT stream
_INDEX_VERSION = 1
_IDAT_CHUNK_BYTES = 1 << 16  # CRCs are checked per chunk read, so a window checks only its own


class ImageError(ValueError):
    """An image that cannot be read, or a set of images that cannot be paired; the message names the files."""


# --------------------------------------------------------------------------------------------
# Reading sources


def check_array(image: np.ndarray, what: str = "image") -> np.ndarray:
    """``image`` if it is a contract image ((H, W) or (H, W, 3), uint8 or uint16), else an :class:`ImageError`."""
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageError(f"{what}: expected 8- or 16-bit pixels, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ImageError(f"{what}: expected a grey (H, W) or RGB (H, W, 3) image, got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"{what}: empty image {image.shape}")
    return np.ascontiguousarray(image)


def _drop_alpha(image: np.ndarray, what: str) -> np.ndarray:
    """Grey+alpha or RGBA -> grey or RGB; only a fully opaque alpha may be dropped."""
    alpha = image[:, :, -1]
    if int(alpha.min()) != np.iinfo(image.dtype).max:
        raise ImageError(f"{what}: has a transparent alpha channel; flatten it onto a background first")
    return image[:, :, :-1] if image.shape[2] == 4 else image[:, :, 0]


def decode_image(data: bytes, what: str = "image") -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP bytes exactly: (H, W) or (H, W, 3) RGB, uint8 or uint16."""
    if data[:8] == PNG_SIGNATURE:
        return decode_png(data, what=what)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        import io

        import tifffile

        try:
            image = tifffile.imread(io.BytesIO(data))
        except Exception as error:  # noqa: BLE001 - any failure is an unreadable file
            raise ImageError(f"{what}: unreadable TIFF ({error})") from None
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[2] not in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)  # planar (C, H, W) TIFF
        if image.ndim == 3 and image.shape[2] in (2, 4):
            image = _drop_alpha(image, what)
        return check_array(image, what)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{what}: unreadable image (not a PNG, JPEG, TIFF or BMP, or corrupt)")
    return _from_opencv(image, what)


def _from_opencv(image: np.ndarray, what: str) -> np.ndarray:
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
            image = _drop_alpha(image, what)
        elif image.shape[2] == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif image.shape[2] == 2:
            image = _drop_alpha(image, what)
    return check_array(image, what)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file exactly (see :func:`decode_image`); errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"{path}: cannot read ({error.strerror or error})") from None
    if not data:
        raise ImageError(f"{path}: empty file")
    return decode_image(data, what=str(path))


def image_info(image: np.ndarray) -> tuple[int, int]:
    """(channels, bit depth) of a contract image."""
    return (1 if image.ndim == 2 else image.shape[2]), (16 if image.dtype == np.uint16 else 8)


# --------------------------------------------------------------------------------------------
# Shard PNGs


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def encode_png(image: np.ndarray, level: int = 0, block_rows: int = 16) -> bytes:
    """Lossless PNG of a contract image, decodable by window (see the module docstring).

    ``level`` is the deflate level (0 stores: fastest to decode; 1 is fast, 9 smallest); ``block_rows``
    the rows between flush points (the decode granularity; each flush costs a few bytes).
    """
    image = check_array(image)
    height, width = image.shape[:2]
    channels, depth = image_info(image)
    bytes_per_pixel = channels * depth // 8
    raw = image.astype(">u2", copy=False) if depth == 16 else image
    raw = np.ascontiguousarray(raw).view(np.uint8).reshape(height, width * bytes_per_pixel)
    filtered = np.empty((height, 1 + raw.shape[1]), np.uint8)
    if level == 0:  # stored: a filter would not make it smaller, so None (nothing to undo when decoding)
        filtered[:, 0] = 0
        filtered[:, 1:] = raw
    else:  # Sub: each byte minus the one a pixel to its left; undone per row by a cumulative sum
        filtered[:, 0] = 1
        filtered[:, 1 : 1 + bytes_per_pixel] = raw[:, :bytes_per_pixel]
        np.subtract(raw[:, bytes_per_pixel:], raw[:, :-bytes_per_pixel], out=filtered[:, 1 + bytes_per_pixel :])

    compressor = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9)
    pieces: list[bytes] = []
    emitted = 0
    offsets = []
    for start in range(0, height, block_rows):
        if start:  # a full flush byte-aligns the stream and resets the dictionary: a raw inflate can start here
            pieces.append(compressor.flush(zlib.Z_FULL_FLUSH))
            emitted += len(pieces[-1])
        offsets.append(emitted if start else 2)  # block 0 starts after the 2-byte zlib header
        pieces.append(compressor.compress(filtered[start : start + block_rows].data))
        emitted += len(pieces[-1])
    pieces.append(compressor.flush())
    stream = b"".join(pieces)

    color_type = 0 if channels == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    index = struct.pack(f">BII{len(offsets)}Q", _INDEX_VERSION, block_rows, len(offsets), *offsets)
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(INDEX_CHUNK, index)]
    for start in range(0, len(stream), _IDAT_CHUNK_BYTES):
        parts.append(_chunk(b"IDAT", stream[start : start + _IDAT_CHUNK_BYTES]))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


@dataclasses.dataclass
class PngHeader:
    height: int
    width: int
    channels: int
    depth: int
    color_type: int
    interlace: int
    # IDAT chunks as (offset of the chunk's payload in the zlib stream, payload, stored CRC, chunk type + payload)
    chunks: list[tuple[int, memoryview, int, memoryview]] = dataclasses.field(default_factory=list)
    block_rows: int = 0
    offsets: tuple[int, ...] = ()


_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def parse_png(data: bytes, what: str = "png", with_stream: bool = True) -> PngHeader:
    """Parse the chunks of a PNG (CRC-checking all but IDAT, which :func:`decode_png` checks as it reads).

    ``with_stream=False`` stops after IHDR.
    """
    if data[:8] != PNG_SIGNATURE:
        raise ImageError(f"{what}: not a PNG")
    view = memoryview(data)
    position = 8
    header: PngHeader | None = None
    stream_size = 0
    ended = False
    while position + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind = bytes(view[position + 4 : position + 8])
        end = position + 12 + length
        if end > len(data):
            raise ImageError(f"{what}: truncated PNG (chunk {kind!r} runs past the end)")
        body = view[position + 8 : position + 8 + length]
        (crc,) = struct.unpack_from(">I", data, position + 8 + length)
        if kind == b"IDAT":
            if header is None:
                raise ImageError(f"{what}: corrupt PNG (image data before IHDR)")
            header.chunks.append((stream_size, body, crc, view[position + 4 : position + 8 + length]))
            stream_size += length
            position = end
            continue
        if zlib.crc32(body, zlib.crc32(kind)) != crc:
            raise ImageError(f"{what}: corrupt PNG (CRC mismatch in chunk {kind!r})")
        if kind == b"IHDR":
            width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", body[:13])
            if color_type not in _CHANNELS or width == 0 or height == 0:
                raise ImageError(f"{what}: corrupt PNG (colour type {color_type}, size {width}x{height})")
            header = PngHeader(height, width, _CHANNELS[color_type], depth, color_type, interlace)
            if not with_stream:
                return header
        elif kind == INDEX_CHUNK and header is not None and length >= 9:
            version, block_rows, count = struct.unpack_from(">BII", body)
            if version == _INDEX_VERSION and length == 9 + 8 * count:
                header.block_rows = block_rows
                header.offsets = struct.unpack_from(f">{count}Q", body, 9)
        elif kind == b"IEND":
            ended = True
            break
        position = end
    if header is None:
        raise ImageError(f"{what}: corrupt PNG (no IHDR chunk)")
    if not ended:
        raise ImageError(f"{what}: truncated PNG (no IEND chunk)")
    if not header.chunks:
        raise ImageError(f"{what}: corrupt PNG (no image data)")
    return header


def png_size(data: bytes, what: str = "png") -> tuple[int, int]:
    """(height, width) of any image, read from the PNG header where it can be."""
    if data[:8] == PNG_SIGNATURE:
        header = parse_png(data, what, with_stream=False)
        return header.height, header.width
    image = decode_image(data, what)
    return image.shape[0], image.shape[1]


def _fast_path(header: PngHeader) -> bool:
    return (
        bool(header.offsets)
        and header.color_type in (0, 2)
        and header.depth in (8, 16)
        and header.interlace == 0
        and header.block_rows > 0
        and len(header.offsets) == -(-header.height // header.block_rows)
    )


def _inflate_from(header: PngHeader, offset: int, wanted: int, what: str) -> bytes:
    """``wanted`` bytes of raw deflate output starting at stream ``offset``, CRC-checking each chunk read."""
    inflater = _inflate_lib.decompressobj(-15)
    pieces: list[bytes] = []
    remaining = wanted
    for start, body, crc, typed in header.chunks:
        if start + len(body) <= offset:
            continue
        if zlib.crc32(typed) != crc:
            raise ImageError(f"{what}: corrupt PNG (CRC mismatch in an IDAT chunk)")
        try:
            piece = inflater.decompress(body[max(0, offset - start) :], remaining)
        except Exception as error:  # noqa: BLE001 - zlib.error / isal error
            raise ImageError(f"{what}: corrupt PNG (bad deflate data: {error})") from None
        pieces.append(piece)
        remaining -= len(piece)
        if remaining <= 0 or inflater.unconsumed_tail:
            break
    data = b"".join(pieces) if len(pieces) != 1 else pieces[0]
    if len(data) != wanted:
        raise ImageError(f"{what}: corrupt PNG (image data ends early)")
    return data


def decode_png(data: bytes, window: tuple[int, int, int, int] | None = None, what: str = "png") -> np.ndarray:
    """Decode PNG bytes exactly to (H, W) or (H, W, 3) RGB; ``window`` = (top, left, height, width) crops.

    Shard PNGs (:func:`encode_png`) decode only the rows and columns the window needs; any
    other PNG is decoded whole by OpenCV and then cropped.
    """
    header = parse_png(data, what)
    if window is None:
        window = (0, 0, header.height, header.width)
    top, left, rows, cols = window
    if top < 0 or left < 0 or rows <= 0 or cols <= 0 or top + rows > header.height or left + cols > header.width:
        raise ValueError(f"{what}: window {window} outside the {header.height}x{header.width} image")
    if not _fast_path(header):
        for _, _, crc, typed in header.chunks:
            if zlib.crc32(typed) != crc:
                raise ImageError(f"{what}: corrupt PNG (CRC mismatch in an IDAT chunk)")
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ImageError(f"{what}: corrupt PNG (the decoder rejected it)")
        image = _from_opencv(image, what)
        return np.ascontiguousarray(image[top : top + rows, left : left + cols])

    bytes_per_pixel = header.channels * header.depth // 8
    row_bytes = 1 + header.width * bytes_per_pixel
    block = top // header.block_rows
    first_row = block * header.block_rows
    raw = _inflate_from(header, header.offsets[block], (top + rows - first_row) * row_bytes, what)
    lines = np.frombuffer(raw, np.uint8).reshape(-1, row_bytes)[top - first_row :]
    filters = lines[:, 0]
    kind = int(filters[0])
    if kind not in (0, 1) or not np.all(filters == kind):
        raise ImageError(f"{what}: corrupt PNG (row filters {sorted(set(filters.tolist()))[:4]} in a shard PNG)")
    if kind == 0:  # None
        pixels = lines[:, 1 + left * bytes_per_pixel : 1 + (left + cols) * bytes_per_pixel]
        pixels = pixels.reshape(rows, cols, bytes_per_pixel)
    else:  # Sub: a cumulative sum along the row, byte-wise mod 256, from the left edge
        pixels = lines[:, 1 : 1 + (left + cols) * bytes_per_pixel].reshape(rows, left + cols, bytes_per_pixel)
        pixels = np.cumsum(pixels, axis=1, dtype=np.uint8)[:, left:]
    if header.depth == 16:
        pixels = np.ascontiguousarray(pixels).view(">u2").astype(np.uint16)
    else:
        pixels = np.ascontiguousarray(pixels)
    return pixels.reshape(rows, cols) if header.channels == 1 else pixels.reshape(rows, cols, 3)


def resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a contract image, keeping its dtype (area when shrinking, bicubic when growing)."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height * width < image.shape[0] * image.shape[1]
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return check_array(out)


# --------------------------------------------------------------------------------------------
# Pairing folders by file stem


def list_images(folder: str | Path) -> dict[str, Path]:
    """Images directly inside ``folder``, by file stem; two files with one stem is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    found: dict[str, Path] = {}
    clashes: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in found:
                clashes.append(f"{found[path.stem].name} and {path.name}")
            else:
                found[path.stem] = path
    if clashes:
        raise ImageError(f"{folder}: several images share a stem: {'; '.join(clashes)}")
    return found


def pair_by_stem(folders: Mapping[str, str | Path]) -> list[tuple[str, dict[str, Path]]]:
    """Match images across ``folders`` (role -> folder) by file stem.

    Every stem must be present in every folder; otherwise the error lists each one-sided stem
    and the folders that lack it.
    """
    listings = {role: list_images(folder) for role, folder in folders.items()}
    stems = sorted(set().union(*(set(listing) for listing in listings.values())))
    missing: list[str] = []
    for stem in stems:
        lacking = [role for role, listing in listings.items() if stem not in listing]
        if lacking:
            present = next(listings[role][stem] for role in listings if stem in listings[role])
            missing.append(f"{present} has no match in " + ", ".join(f"{role} ({folders[role]})" for role in lacking))
    if missing:
        shown = "\n  ".join(missing[:20]) + (f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise ImageError(f"{len(missing)} stem(s) present on one side only:\n  {shown}")
    if not stems:
        raise ImageError("no images found in " + ", ".join(str(folder) for folder in folders.values()))
    return [(stem, {role: listings[role][stem] for role in listings}) for stem in stems]


_SAFE_KEY = re.compile(r"[^A-Za-z0-9_-]+")


def safe_key(text: str) -> str:
    """A WebDataset sample key from a file stem: no dots or slashes (they split keys from suffixes)."""
    return _SAFE_KEY.sub("_", text).strip("_") or "sample"


def same_size(
    images: Mapping[str, np.ndarray], paths: Mapping[str, Path | str], resize: str | None
) -> dict[str, np.ndarray]:
    """Bring a pair's images to one size, or raise an error naming the files and their sizes.

    ``resize``: None (sizes must match), ``"a"`` / ``"b"`` (resize the others to that source's size),
    or ``"crop"`` (centre-crop all to the common overlap).
    """
    sizes = {role: image.shape[:2] for role, image in images.items()}
    if len(set(sizes.values())) <= 1:
        return dict(images)
    if resize is None:
        listing = ", ".join(f"{paths[role]} is {h}x{w}" for role, (h, w) in sizes.items())
        raise ImageError(f"pair sizes differ: {listing} (H x W); pass --resize a|b|crop to align them")
    if resize in images:
        height, width = sizes[resize]
        return {role: resize_to(image, height, width) for role, image in images.items()}
    if resize == "crop":
        height = min(h for h, _ in sizes.values())
        width = min(w for _, w in sizes.values())
        out = {}
        for role, image in images.items():
            top = (image.shape[0] - height) // 2
            left = (image.shape[1] - width) // 2
            out[role] = np.ascontiguousarray(image[top : top + height, left : left + width])
        return out
    raise ValueError(f"unknown resize mode {resize!r}; use one of: " + ", ".join([*images, "crop"]))
