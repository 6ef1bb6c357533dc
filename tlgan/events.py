"""TensorBoard scalars without TensorFlow, tensorboardX or torch: the event file written by hand.

An event file is a TFRecord file (each record: its length as uint64, a masked CRC-32C of the length, the bytes,
a masked CRC-32C of the bytes) of `tensorflow.Event` protocol buffers. tlgan logs scalars only, so the three
messages it needs are encoded here in a few lines. Importing tensorboardX cost every run ~1.6 CPU-seconds (it
imports torch when torch is installed); this module imports nothing beyond the standard library.

The format is checked in tests/test_events.py against TensorFlow's own record reader and `Event` proto.
"""

import socket
import struct
import time
from typing import Dict


def _crc32c_table():
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord files use it."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def record(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", _masked(crc32c(length))) + data + struct.pack("<I", _masked(crc32c(data)))


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 in two's complement, as protobuf encodes negative numbers
  out = bytearray()
  while True:
    bits, value = value & 0x7F, value >> 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2): strings and nested messages."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str = "", scalars: Dict[str, float] = None) -> bytes:
  """An encoded `Event` (wall_time = 1, step = 2, file_version = 3, summary = 5) whose summary holds one
  `Summary.Value` (tag = 1, simple_value = 2) per scalar."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)  # field 1, 64-bit
  if step:
    out += _varint(2 << 3 | 0) + _varint(int(step))
  if file_version:
    out += _field(3, file_version.encode())
  if scalars:
    values = b"".join(_field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value))
                      for tag, value in scalars.items())
    out += _field(5, values)
  return out


def file_name() -> str:
  """A new events file's name: TensorBoard reads every file whose name holds 'tfevents'."""
  return f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}"


def header() -> bytes:
  """The record that opens every events file."""
  return record(event(time.time(), file_version="brain.Event:2"))


def scalars(step: int, values: Dict[str, float]) -> bytes:
  """The record of `values` at `step`."""
  return record(event(time.time(), step, scalars={k: float(v) for k, v in values.items()}))
