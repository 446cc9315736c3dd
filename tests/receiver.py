"""A real HTTPS receiver on 127.0.0.1 with its own CA, standing in for the Logstash http input.

It answers 200 and keeps every document (a top-level JSON array counts as one document per element, as
Logstash's json codec does). Faults: `answers` is a queue of status codes (with optional Retry-After) given
before it goes back to 200; `hang` holds every request until released or the client gives up.
"""
import gzip
import http.server
import json
import socket
import ssl
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Logstash does

    def log_message(self, *args):
        pass

    def do_POST(self):
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with receiver.lock:
            receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                      "connection": self.client_address})
            answer = receiver.answers.pop(0) if receiver.answers else None
        if receiver.hang.is_set():
            receiver.released.wait(receiver.hang_seconds)
            return
        status, retry_after = answer if answer else (200, None)
        if status == 200:
            payload = json.loads(body)
            with receiver.lock:
                receiver.documents.extend(payload if isinstance(payload, list) else [payload])
        reply = b"ok" if status == 200 else b"fault"
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a client opening ten connections at once,
    # which then wait a second for the kernel to retry.
    request_queue_size = 128

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()


class Receiver:
    def __init__(self, server_cert, ca_file):
        self.lock = threading.Lock()
        self.documents, self.requests, self.answers = [], [], []
        self.hang, self.released, self.hang_seconds = threading.Event(), threading.Event(), 60
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.receiver = self
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.ca_file = ca_file
        self.url = "https://127.0.0.1:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_next(self, *statuses, retry_after=None):
        """Answer the next requests with these statuses, then 200 again."""
        with self.lock:
            self.answers.extend((status, retry_after) for status in statuses)

    def kinds(self):
        return sorted(document["kind"] for document in self.documents)

    def of_kind(self, kind):
        return [document for document in self.documents if document["kind"] == kind]

    def close(self):
        self.released.set()
        self.server.shutdown()
        self.server.server_close()
