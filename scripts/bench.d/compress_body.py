"""The body of the compress-json rows: ~100 KB of JSON, the same bytes for
every server and every run (seeded), shaped like an API listing (ids, names,
dates, prices, flags, short texts) rather than one string repeated, so the
ratios are those of real responses."""
import json
import os
import random

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee "
         "zulu lariat server stream event coroutine handler request response").split()


def make(size=100 * 1024):
    rnd = random.Random(13)
    items, n = [], 0
    while True:
        item = {
            "id": 100000 + n,
            "name": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 4))).title(),
            "email": f"{rnd.choice(WORDS)}.{rnd.choice(WORDS)}{rnd.randint(1, 999)}@example.com",
            "created": f"2026-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}T"
                       f"{rnd.randint(0, 23):02d}:{rnd.randint(0, 59):02d}:{rnd.randint(0, 59):02d}Z",
            "price": round(rnd.uniform(1, 5000), 2),
            "stock": rnd.randint(0, 10000),
            "active": rnd.random() < 0.7,
            "tags": rnd.sample(WORDS, rnd.randint(1, 4)),
            "note": " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 12))),
        }
        items.append(item)
        n += 1
        data = json.dumps({"items": items}, separators=(",", ":"))
        if len(data) >= size:
            return data.encode()


def path(tmp):
    """The body as a file under the bench's temp dir, written once."""
    p = os.path.join(tmp, "bench-100k.json")
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(make())
        # nginx's workers run as nobody: they must reach the file through the
        # 0700 temp dir (traverse, not list) and read it
        os.chmod(tmp, 0o711)
        os.chmod(p, 0o644)
    return p
