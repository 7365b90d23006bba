#!/usr/bin/env python3
"""The share of a profile's samples by component, from collapsed stacks (inferno's or
Brendan Gregg's folded format: `root;...;leaf COUNT`, kernel frames marked `_[k]`).

Self: each sample goes to the component of its innermost frame that names one (the kernel,
the allocator and libc's copies by the leaf itself). Inclusive: the samples whose stack holds
a frame of the component anywhere (they overlap, so they do not add up to 100 %).

    python3 bench/components.py /tmp/profile-after.folded
"""
import re
import sys

# First match wins, for frames from the leaf up. The leaf-only ones come first.
WAKEUPS = "kernel: threads sleeping and waking (futex, epoll, scheduler)"
KERNEL = "kernel: sockets and other system calls"
WAKING = re.compile(r"^(futex|__futex|schedule|__schedule|try_to_wake_up|ep_poll|do_epoll_wait|finish_task_switch|__wake_up|wake_up_q|do_nanosleep)")
LEAF = [
    (KERNEL, re.compile(r"_\[k\]$")),
    ("allocation", re.compile(r"^(_?mi_|mimalloc|__rust_(alloc|dealloc|realloc)|__rdl_|malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|__GI___libc_(malloc|free)|__libc_(malloc|free|calloc)|malloc_consolidate|tcache)")),
    ("libc copies", re.compile(r"^(__)?mem(cpy|move|set|cmp)|^__memcpy|^__memmove|^__memset|^__strlen|^strlen")),
]
CRATES = [
    ("Kafka producer (rdkafka, librdkafka)", re.compile(r"^(rd_kafka|rd_|rdkafka::|rdkafka_sys|lz4|LZ4|ZSTD|crc32)")),
    ("Redis client (redis, store)", re.compile(r"^(redis::|<redis::|combine::|store::|<store::)")),
    ("HTTP (hyper, http)", re.compile(r"^(<?hyper::|<?hyper_util::|<?http::|httparse|<?http_body)")),
    ("protocol work (wechat, schemas, JSON, XML, SHA-1, AES)", re.compile(r"^(<?wechat::|<?schemas::|<?serde_json::|<?quick_xml::|<?sha1|<?aes::|<?cbc::|<?base64::|<?hex::|<?serde::|ingest::cloudevents|<?form_urlencoded)")),
    ("metrics", re.compile(r"^(<?metrics|<?metrics_exporter_prometheus|<?metrics_util)")),
    ("ingest (the rest of its own code)", re.compile(r"^(<?ingest::|<?ops::|<?spool::)")),
    ("runtime (tokio, std threads, futures)", re.compile(r"^(<?tokio::|<?std::|<?core::|<?futures|<?parking_lot|<?alloc::sync|start_thread|clone3?$|__GI___clone)")),
]
ORDER = [WAKEUPS] + [name for name, _ in LEAF] + [name for name, _ in CRATES] + ["other"]


def frames_of(line):
    stack, _, count = line.rstrip("\n").rpartition(" ")
    return stack.split(";"), int(count)


def self_component(frames):
    leaf = frames[-1]
    for name, pattern in LEAF:
        if pattern.search(leaf):
            if name == KERNEL and any(WAKING.search(f) for f in frames):
                return WAKEUPS
            return name
    for frame in reversed(frames):
        for name, pattern in CRATES:
            if pattern.search(frame):
                return name
    # A thread of librdkafka's own (rdk:broker…, rdk:main) is the producer whatever it runs.
    if frames[0].startswith("rdk:"):
        return CRATES[0][0]
    return "other"


def main(path):
    total = 0
    own = dict.fromkeys(ORDER, 0)
    inclusive = dict.fromkeys(ORDER, 0)
    with open(path) as folded:
        for line in folded:
            if not line.strip():
                continue
            frames, count = frames_of(line)
            total += count
            own[self_component(frames)] += count
            seen = set()
            for frame in frames:
                for name, pattern in LEAF + CRATES:
                    if name not in seen and pattern.search(frame):
                        seen.add(name)
            if frames[0].startswith("rdk:"):
                seen.add(CRATES[0][0])
            if any(WAKING.search(f) for f in frames):
                seen.add(WAKEUPS)
            for name in seen:
                inclusive[name] += count
    threads = {}
    with open(path) as folded:
        for line in folded:
            if line.strip():
                frames, count = frames_of(line)
                thread = re.sub(r"[-:]?\d+$", "", frames[0])
                threads[thread] = threads.get(thread, 0) + count
    print(f"samples: {total}")
    print(f"{'component':58} {'self':>7} {'inclusive':>10}")
    for name in ORDER:
        print(f"{name:58} {100 * own[name] / max(total, 1):6.1f}% {100 * inclusive[name] / max(total, 1):9.1f}%")
    print("by thread:")
    for thread, count in sorted(threads.items(), key=lambda kv: -kv[1]):
        print(f"  {thread:56} {100 * count / max(total, 1):6.1f}%")


if __name__ == "__main__":
    main(sys.argv[1])
