"""Send N condorjob-like documents to URL one way; bench/run.py measures this process.

Modes: afmetrics (this project's Delivery, as configured), new-connection (requests.post per document,
as the tool sites run today sends), bare (http.client over keep-alive connections: the receiver's ceiling).
"""
import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "collectors"))


def documents(count):
    return [{"kind": "condorjob", "cluster": "BENCH", "users": "user%03d" % (i % 300), "Id": "%d.%d" % (i // 10, i % 10),
             "Runtime": i % 86400, "state": "running"} for i in range(count)]


def send_afmetrics(args, docs):
    import math

    import afmetrics_delivery

    opts = argparse.Namespace(url=args.url, ca_bundle=args.ca, send_budget=3600.0, run_budget=math.inf, gzip=False,
                              connections=args.connections, batch_size=args.batch_size, batch_bytes=1000000, proxy="")
    outcome = afmetrics_delivery.Delivery(opts, math.inf).deliver(docs, "bench-token")
    return len(outcome.undelivered) + len(outcome.refused)


def send_new_connection(args, docs):
    import requests

    failed = 0
    for document in docs:
        failed += requests.post(args.url, json=dict(document, token="bench-token"), verify=args.ca,
                                timeout=30).status_code != 200
    return failed


def send_bare(args, docs):
    address = urllib.parse.urlsplit(args.url)
    context = ssl.create_default_context(cafile=args.ca)
    failures = []

    def worker(share):
        connection = http.client.HTTPSConnection(address.hostname, address.port, context=context)
        connection.connect()
        # As urllib3 does: without it Nagle's algorithm holds small requests back.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for document in share:
            connection.request("POST", "/", body=json.dumps(document), headers={"Content-Type": "application/json"})
            reply = connection.getresponse()
            reply.read()
            failures.append(reply.status != 200)

    threads = [threading.Thread(target=worker, args=(docs[i::args.connections],)) for i in range(args.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(failures)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["afmetrics", "new-connection", "bare"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=300)
    args = parser.parse_args()
    sender = {"afmetrics": send_afmetrics, "new-connection": send_new_connection, "bare": send_bare}[args.mode]
    failed = sender(args, documents(args.count))
    if failed:
        sys.exit("%d of %d documents not delivered" % (failed, args.count))


if __name__ == "__main__":
    main()
