#!/usr/bin/env python3
"""An independent streaming load client for llama-server's native /completion endpoint (stdlib only).

N threads each send one request at the same moment (prompt of about --prompt-tokens tokens, --output tokens with
ignore_eos so every stream decodes the same length) and time the server-sent events: time to first token, and the
decode rate of each stream after its first token. Prints one JSON line per concurrency level.

    python3 load.py --port 8302 --users 1,4,16 --output 128
"""
from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time


def one(port: int, prompt: str, n: int, out: list, start: threading.Event) -> None:
    body = json.dumps({"prompt": prompt, "n_predict": n, "ignore_eos": True, "stream": True,
                       "cache_prompt": False, "temperature": 0})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start.wait()
    t0 = time.perf_counter()
    conn.request("POST", "/completion", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    stamps = []
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        ev = json.loads(line[5:])
        if ev.get("content") is not None and not ev.get("stop"):
            stamps.append(time.perf_counter())
        if ev.get("stop"):
            timings = ev.get("timings", {})
            break
    else:
        timings = {}
    conn.close()
    out.append({"ttft": stamps[0] - t0 if stamps else None, "tokens": len(stamps),
                "decode_tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else None,
                "end": time.perf_counter(), "t0": t0, "server_timings": timings})


def level(port: int, users: int, prompt: str, n: int) -> dict:
    out: list = []
    start = threading.Event()
    threads = [threading.Thread(target=one, args=(port, prompt, n, out, start)) for _ in range(users)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    wall = max(o["end"] for o in out) - t0
    ttft = sorted(o["ttft"] for o in out if o["ttft"] is not None)
    dec = [o["decode_tps"] for o in out if o["decode_tps"]]
    return {"users": users, "ok": len(out), "tokens": sum(o["tokens"] for o in out), "wall_s": round(wall, 3),
            "aggregate_tps": round(sum(o["tokens"] for o in out) / wall, 1),
            "per_stream_decode_tps_median": round(statistics.median(dec), 1) if dec else None,
            "ttft_p50_s": round(ttft[len(ttft) // 2], 4) if ttft else None, "ttft_max_s": round(ttft[-1], 4) if ttft else None,
            "server_predicted_per_second_median": round(statistics.median(
                o["server_timings"].get("predicted_per_second", 0) for o in out), 1),
            "server_prompt_n": out[0]["server_timings"].get("prompt_n")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--users", default="1,4,16")
    ap.add_argument("--output", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=500)
    args = ap.parse_args()
    words = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
             "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
    prompt = " ".join(words[i % len(words)] for i in range(args.prompt_words))
    level(args.port, 1, prompt, 8)  # warm-up
    for u in (int(x) for x in args.users.split(",")):
        print(json.dumps(level(args.port, u, prompt, args.output)), flush=True)


if __name__ == "__main__":
    main()
