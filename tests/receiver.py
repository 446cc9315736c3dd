"""A real HTTPS receiver on 127.0.0.1 with its own CA, standing in for the Logstash http input.

It answers 200 and keeps every document (a top-level JSON array counts as one document per element, as
Logstash's json codec does). Faults, each until restore():
- fail_next(*statuses): the next requests get these statuses (with optional Retry-After), then 200 again;
- answer_always(status): every request gets this status;
- hang: every request is held until released or the client gives up (`hanging` is set once one is held);
- reset_mid_request(): the connection is reset after half the body was read: nothing kept;
- lose_replies(count): the document is kept, then the connection is reset instead of the reply, so the
  client cannot know it arrived (`lost` holds those documents: the only ones that may arrive twice);
- refuse_documents(status, predicate): a request holding a document for which predicate is true gets status;
- limit_batch(size): a JSON array of more than size documents gets 413 (Payload Too Large);
- redirect_to(url): every request gets 302 with Location: url (an ingress pointing at a maintenance page);
- trickle(): every request gets 200 and then its body a byte every 0.2 s, for ever (a broken proxy);
- refuse(): nothing listens on the port;
- present(cert): the port serves a certificate of another CA.
"""
import gzip
import http.server
import json
import socket
import ssl
import struct
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Logstash does

    def log_message(self, *args):
        pass

    def _reset(self):
        # SO_LINGER 0 makes close() send a TCP RST: the client sees "connection reset", not a clean end.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_POST(self):
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length", 0))
        if receiver.resetting:
            self.rfile.read(length // 2)
            self._reset()
            return
        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        with receiver.lock:
            receiver.requests.append({"path": self.path, "headers": dict(self.headers), "body": body,
                                      "connection": self.client_address})
            answer = receiver.answers.pop(0) if receiver.answers else receiver.always
            lose_reply = receiver.replies_to_lose > 0
            receiver.replies_to_lose -= lose_reply
        if receiver.hang.is_set():
            released = receiver.released
            receiver.hanging.set()
            released.wait(receiver.hang_seconds)
            return
        status, retry_after = answer if answer else (200, None)
        payload = json.loads(body)
        documents = payload if isinstance(payload, list) else [payload]
        if status == 200:
            status = receiver.judge(payload, documents)
        if status == 200:
            with receiver.lock:
                receiver.documents.extend(documents)
                if lose_reply:
                    receiver.lost.extend(documents)
        if lose_reply:
            self._reset()
            return
        if receiver.trickling:
            self._trickle()
            return
        reply = b"ok" if status == 200 else b"fault"
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        if receiver.location:
            self.send_header("Location", receiver.location)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def _trickle(self):
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        try:
            while self.server.receiver.trickling:
                self.wfile.write(b"k")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client gave up
            pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops the SYNs of a client opening ten connections at once,
    # which then wait a second for the kernel to retry.
    request_queue_size = 128

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def handle_error(self, request, client_address):
        # A client that gives up (a timeout, a bad certificate) or a connection reset on purpose is
        # part of the faults under test, not a receiver failure worth a traceback on the test's stderr.
        pass


class Receiver:
    def __init__(self, server_cert, ca_file):
        self.lock = threading.Lock()
        self.documents, self.requests, self.answers, self.lost = [], [], [], []
        self.always, self.resetting, self.replies_to_lose = None, False, 0
        self.refusals, self.batch_limit = [], None
        self.location, self.trickling = None, False
        self.hang, self.released, self.hanging, self.hang_seconds = (threading.Event(), threading.Event(),
                                                                     threading.Event(), 60)
        self.ca_file = ca_file
        self.server_cert = server_cert
        self.server = None
        self._listen(server_cert, 0)
        self.url = "https://127.0.0.1:%d/" % self.port

    def _listen(self, server_cert, port):
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.receiver = self
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(context)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        # A short poll interval: stopping and restarting the server (refuse, present, restore) is quick.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _stop_listening(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def fail_next(self, *statuses, retry_after=None):
        """Answer the next requests with these statuses, then 200 again."""
        with self.lock:
            self.answers.extend((status, retry_after) for status in statuses)

    def answer_always(self, status, retry_after=None):
        with self.lock:
            self.always = (status, retry_after)

    def refuse_documents(self, status, predicate):
        with self.lock:
            self.refusals.append((status, predicate))

    def limit_batch(self, size):
        with self.lock:
            self.batch_limit = size

    def judge(self, payload, documents):
        """The status for a well-formed request: 413 for a batch over the limit, a refusal's status, or 200."""
        with self.lock:
            if isinstance(payload, list) and self.batch_limit is not None and len(payload) > self.batch_limit:
                return 413
            for status, predicate in self.refusals:
                if any(predicate(document) for document in documents):
                    return status
        return 200

    def redirect_to(self, url):
        with self.lock:
            self.always, self.location = (302, None), url

    def trickle(self):
        self.trickling = True

    def reset_mid_request(self):
        self.resetting = True

    def lose_replies(self, count):
        with self.lock:
            self.replies_to_lose = count

    def refuse(self):
        self._stop_listening()

    def present(self, server_cert):
        self._stop_listening()
        self._listen(server_cert, self.port)

    def restore(self):
        """Back to a healthy endpoint on the same URL: every fault cleared, held requests released."""
        with self.lock:
            self.answers, self.always, self.resetting, self.replies_to_lose = [], None, False, 0
            self.refusals, self.batch_limit = [], None
            self.location, self.trickling = None, False
        self.hang.clear()
        self.released.set()
        self.released = threading.Event()
        self._stop_listening()
        self._listen(self.server_cert, self.port)

    def args(self):
        """The options pointing a collector at this receiver."""
        return ["-u", self.url, "--ca-bundle", self.ca_file]

    def kinds(self):
        return sorted(document["kind"] for document in self.documents)

    def of_kind(self, kind):
        return [document for document in self.documents if document["kind"] == kind]

    def close(self):
        self.trickling = False
        self.released.set()
        self._stop_listening()
