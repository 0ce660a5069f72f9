"""How fast is ``find_key_by_hash`` with 100,000 keys stored?

    .venv/bin/python plugins/sira-storage-sqlite/bench/lookup.py [--keys 100000] [--lookups 20000]

Prints, per lookup: the SQL alone (in the reader's thread, no hop), one awaited lookup at a time
(SQL + a round trip to the reader thread), and many lookups in flight at once (the thread runs them
back to back, as when many requests authenticate together). The auth plugin caches keys, so the
gateway pays this only on a cache miss.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import tempfile
import time
from pathlib import Path

from sira_storage_sqlite import SQLiteStorage
from sira_storage_sqlite._keys import _KEY, _key

from sira_kernel.storage import Tenant


def digest(i: int) -> str:
    return hashlib.sha256(f"sk-sira-{i}".encode()).hexdigest()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        async with SQLiteStorage(Path(tmp) / "bench.db") as storage:
            await storage.create_tenant(Tenant(id="t", name="t", created_at=0.0))
            rows = [
                (f"key-{i}", digest(i), "sk-sira-xxxx", f"key {i}", "t", "member", float(i), "bench", "{}", "{}")
                for i in range(args.keys)
            ]
            await storage._db.write(lambda c: c.executemany(
                "INSERT INTO api_keys (id, key_hash, prefix, name, tenant_id, role, created_at, created_by, limits,"
                " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows))
            hashes = [digest(random.randrange(args.keys)) for _ in range(args.lookups)]
            for h in hashes[:1000]:  # warm the page cache and statement cache
                assert await storage.find_key_by_hash(h) is not None

            def sql_only(connection: object) -> float:
                start = time.perf_counter()
                for h in hashes:
                    _key(connection.execute(_KEY + " WHERE key_hash = ?", (h,)).fetchall()[0])  # type: ignore[attr-defined]
                return time.perf_counter() - start

            sql = await storage._db.read(sql_only)

            start = time.perf_counter()
            for h in hashes:
                await storage.find_key_by_hash(h)
            sequential = time.perf_counter() - start

            async def worker(part: list[str]) -> None:
                for h in part:
                    await storage.find_key_by_hash(h)

            n = args.concurrency
            start = time.perf_counter()
            await asyncio.gather(*(worker(hashes[i::n]) for i in range(n)))
            concurrent = time.perf_counter() - start

    per = 1e6 / args.lookups
    print(f"{args.keys} keys, {args.lookups} lookups of random stored hashes")
    print(f"  SQL + decode in the reader thread : {sql * per:6.1f} us/lookup")
    print(f"  awaited one at a time            : {sequential * per:6.1f} us/lookup")
    print(f"  {n} in flight                     : {concurrent * per:6.1f} us/lookup (amortised)")


if __name__ == "__main__":
    asyncio.run(main())
