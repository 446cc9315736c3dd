#!/usr/bin/env python3
"""The endpoint for verify.yml: HTTPS on 127.0.0.1, answers 200 to every POST and appends each JSON document
it got (the elements of a top-level array one by one, as Logstash does) as one line to OUT.

usage: receiver.py CERT KEY PORT OUT PIDFILE
"""
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the collectors' connection pool expects

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        payload = json.loads(body)
        documents = payload if isinstance(payload, list) else [payload]
        with open(self.server.out, "a", encoding="utf-8") as out:
            for document in documents:
                out.write(json.dumps(document) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def main():
    cert, key, port, out, pidfile = sys.argv[1:]
    server = ThreadingHTTPServer(("127.0.0.1", int(port)), Receiver)
    server.out = out
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(pidfile, "w", encoding="utf-8") as handle:
        handle.write(str(os.getpid()))
    server.serve_forever()


if __name__ == "__main__":
    main()
