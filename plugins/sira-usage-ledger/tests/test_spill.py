"""The spill file on its own: appends, torn lines, trimming, and its locks (threads and processes)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from ledger_helpers import record
from sira_usage_ledger import SpillFile
from sira_usage_ledger._spill import encode_line


def ids(spill: SpillFile) -> list[str]:
    records, bad, _ = spill.read(0, spill.size(), 1_000_000)
    assert not bad
    return [r.request_id for r in records]


def test_append_read_and_drop_prefix(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "data" / "spill.jsonl")
    assert spill.size() == 0 and spill.recount() == 0 and spill.begin_replay() == 0
    spill.end_replay()
    spill.append([encode_line(record(f"r{i}")) for i in range(5)])
    assert spill.records == 5 and ids(spill) == ["r0", "r1", "r2", "r3", "r4"]
    first, bad, offset = spill.read(0, spill.size(), 2)
    assert [r.request_id for r in first] == ["r0", "r1"] and not bad
    spill.drop_prefix(offset, 2)
    assert ids(spill) == ["r2", "r3", "r4"] and spill.records == 3 == spill.recount()
    spill.drop_prefix(spill.size(), 3)
    assert not spill.path.exists() and spill.records == 0


def test_a_torn_last_line_is_ended_and_rejected_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "spill.jsonl"
    path.write_bytes(encode_line(record("ok")) + b'{"request_id": "to')
    spill = SpillFile(path)
    assert spill.recount() == 2 and path.read_bytes().endswith(b"\n")
    spill.append([encode_line(record("after"))])
    records, bad, offset = spill.read(0, spill.size(), 100)
    assert [r.request_id for r in records] == ["ok", "after"] and bad == [b'{"request_id": "to\n']
    spill.reject(bad)
    assert spill.rejected_path.read_bytes() == b'{"request_id": "to\n'


def test_appends_during_a_replay_are_kept(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    other_generation = SpillFile(tmp_path / "spill.jsonl")  # a second object on the same file
    spill.append([encode_line(record(f"old-{i}")) for i in range(50)])
    end = spill.begin_replay()
    assert end is not None and other_generation.begin_replay() is None  # one replay at a time

    def append_more() -> None:
        for i in range(200):
            other_generation.append([encode_line(record(f"new-{i}"))])

    writer = threading.Thread(target=append_more)
    writer.start()
    replayed: list[str] = []
    offset = 0
    while offset < end:
        records, _, offset = spill.read(offset, end, 7)
        replayed += [r.request_id for r in records]
    spill.drop_prefix(offset, len(replayed))  # while the other generation may be appending
    writer.join()
    spill.end_replay()
    assert replayed == [f"old-{i}" for i in range(50)]
    assert ids(spill) == [f"new-{i}" for i in range(200)]


def test_the_replay_lock_holds_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "spill.jsonl"
    command = (
        "import sys; from pathlib import Path; from sira_usage_ledger import SpillFile; "
        f"s = SpillFile(Path({str(path)!r})); assert s.begin_replay() is not None; "
        "print('held', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen([sys.executable, "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert SpillFile(path).begin_replay() is None  # another process replays this file
        holder.stdin.close()
        assert holder.wait(10) == 0
    spill = SpillFile(path)
    assert spill.begin_replay() == 0
    spill.end_replay()
