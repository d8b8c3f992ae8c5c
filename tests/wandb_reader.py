"""Read a W&B offline run file back (wandb 0.31 ships no reader for it).

Format (a LevelDB-style log): a 7-byte header, then 32 KiB blocks of records; each record
is crc32 (4 bytes), length (2, little endian), type (1: full, 2/3/4: first/middle/last)
and its payload. Payloads joined across first..last are ``wandb_internal_pb2.Record``s.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path):
    data = Path(path).read_bytes()
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        room = BLOCK - (pos % BLOCK)
        if room < 7:  # block trailer padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += room
            continue
        chunk = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad crc at {pos}"
        pos += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_run(path: Path) -> dict:
    """Summary, history rows, artifacts, config and the run's name/group/job type/tags."""
    summary, history, artifacts, config, run = {}, [], [], {}, {}
    for raw in payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            for item in record.summary.update:
                summary[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            artifacts.append(record.artifact)
        elif kind == "run":
            run = {"name": record.run.display_name, "group": record.run.run_group, "job_type": record.run.job_type,
                   "tags": list(record.run.tags)}
            for item in record.run.config.update:  # the config given to wandb.init
                config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[_key(item)] = json.loads(item.value_json)
    return {"summary": summary, "history": history, "artifacts": artifacts, "config": config, "run": run}
