#!/usr/bin/python3
"""Closed-loop load on a PyKMIP server, one persistent TLS connection per worker.

  /usr/bin/python3 bench/peers/pykmip-load.py --port N --certs DIR --op create|get \
      --concurrency C --seconds S [--warmup S] [--keys K]

Workers are processes, not threads: PyKMIP's client encodes and decodes TTLV in pure Python, and
under the GIL eight client threads would share one core and measure the client instead of the
server. Each worker opens its connection and warms up, then all start together at a barrier.

Output on stdout, one JSON object a line:
  {"event": "start"}            when the timed window opens (the caller samples server CPU here)
  {op, concurrency, ops, seconds, opsPerSec, p50Ms, p99Ms, errors, clientCpuSec[, firstError]}
                                when every worker has finished (and the caller samples again).
clientCpuSec is the workers' own CPU time in the window, to tell whether the client was the limit.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
import warnings

# The server's crypto engine imports Blowfish, CAST5 and IDEA, which `cryptography` warns about on
# every import; the client imports the same modules.
warnings.filterwarnings('ignore')

from kmip.core import enums  # noqa: E402
from kmip.pie.client import ProxyKmipClient  # noqa: E402

USAGE = [enums.CryptographicUsageMask.ENCRYPT, enums.CryptographicUsageMask.DECRYPT]


def connect(args):
    # config_file=/dev/null: otherwise the client looks for ~/.pykmip/pykmip.conf and
    # /etc/pykmip/pykmip.conf and logs a warning when neither exists.
    client = ProxyKmipClient(
        hostname='127.0.0.1', port=args.port,
        cert=os.path.join(args.certs, 'client.crt'), key=os.path.join(args.certs, 'client.key'),
        ca=os.path.join(args.certs, 'ca.crt'), config_file='/dev/null')
    client.open()
    return client


def create(client):
    return client.create(enums.CryptographicAlgorithm.AES, 256, cryptographic_usage_mask=USAGE)


def worker(args, index, ids, barrier, results):
    try:
        client = connect(args)
    except Exception:
        barrier.abort()  # the parent and the other workers stop waiting, and the run fails
        raise
    seq = index
    if args.op == 'create':
        def op():
            create(client)
    else:
        # Workers start at different keys so that they do not all read the same row in step.
        def op():
            nonlocal seq
            client.get(ids[seq % len(ids)])
            seq += 1
    try:
        end = time.monotonic() + args.warmup
        while time.monotonic() < end:
            op()
    except Exception:
        barrier.abort()
        raise
    barrier.wait()
    cpu0 = time.process_time()
    start = time.monotonic()
    end = start + args.seconds
    latencies, errors, first_error = [], 0, None
    now = start
    while now < end:
        try:
            op()
            done = time.monotonic()
            latencies.append(done - now)
            now = done
        except Exception as e:  # a failed request counts as an error, not as throughput
            errors += 1
            first_error = first_error or '%s: %s' % (type(e).__name__, e)
            # The connection may be left mid-message; start over on a fresh one.
            try:
                client.close()
            except Exception:
                pass
            try:
                client = connect(args)
            except Exception:
                time.sleep(0.05)
            now = time.monotonic()
    results.put((latencies, errors, first_error, now - start, time.process_time() - cpu0))
    client.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--port', type=int, required=True)
    p.add_argument('--certs', required=True)
    p.add_argument('--op', choices=['create', 'get'], required=True)
    p.add_argument('--concurrency', type=int, default=1)
    p.add_argument('--seconds', type=float, default=3.0)
    p.add_argument('--warmup', type=float, default=0.5)
    p.add_argument('--keys', type=int, default=64, help='keys created beforehand for get')
    args = p.parse_args()

    ids = []
    if args.op == 'get':
        client = connect(args)
        ids = [create(client) for _ in range(args.keys)]
        client.close()

    # fork: workers inherit the imported kmip modules and the id list instead of re-importing.
    ctx = mp.get_context('fork')
    barrier = ctx.Barrier(args.concurrency + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(args, i, ids, barrier, results))
             for i in range(args.concurrency)]
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=60)
    except Exception:
        for proc in procs:
            proc.terminate()
        sys.exit('pykmip-load: a worker could not connect or warm up (see above)')
    print(json.dumps({'event': 'start'}), flush=True)

    # Drain the queue before join: a child blocks on exit until its queued data is read.
    got = [results.get(timeout=args.seconds + 60) for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(x for g in got for x in g[0])
    errors = sum(g[1] for g in got)
    first_error = next((g[2] for g in got if g[2]), None)
    seconds = max(g[3] for g in got)

    def pct(q):  # nearest rank, as bench/load.ts
        if not latencies:
            return 0
        i = min(len(latencies) - 1, max(0, math.ceil(q / 100 * len(latencies)) - 1))
        return round(latencies[i] * 1000, 3)

    out = {
        'op': args.op, 'concurrency': args.concurrency, 'ops': len(latencies),
        'seconds': round(seconds, 4), 'opsPerSec': round(len(latencies) / seconds, 1),
        'p50Ms': pct(50), 'p99Ms': pct(99), 'errors': errors,
        'clientCpuSec': round(sum(g[4] for g in got), 3),
    }
    if first_error:
        out['firstError'] = first_error[:300]
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
