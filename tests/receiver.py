"""A real HTTPS server on 127.0.0.1 with its own CA: a model of the central AF endpoint, from its published
configuration and the sources of what runs it.

The endpoint (ATLAS-Analytics/uc_ls_collectors, branch af, commit 0fb6264: kube/af.yaml, Dockerfile.AF,
logstash.yml, pipelines/af.yml, configs/AF.conf) is Logstash 8.7.0's http input with the json codec, one
pipeline worker and an in-memory queue, behind ingress-nginx. What each layer does, in the order a request
meets them:

- ingress-nginx: a body over 1 MiB as sent (its proxy-body-size default, "1m") gets 413; an upstream that does
  not answer within 60 s (its proxy-read-timeout default) gets the client a 504, while the upstream goes on
  with the request. Both are settable here (max_body, gateway_timeout) for tests that need them smaller.
- the http input (logstash-plugins/logstash-input-http 3.6.1, the version Logstash 8.7.0 bundles): a gzip body
  is inflated (HttpInitializer.java: HttpContentDecompressor), one that does not inflate gets 400
  (HttpServerHandler.java); a Content-Type of application/json goes to the json codec, any other to the plain
  codec, whose event holds the body as "message" (http.rb: additional_codecs). Each event gets the request's
  headers as "headers" and the client's address as "host" (ecs_compatibility disabled, logstash.yml). The
  answer, 200 "ok", comes once every event was queued (MessageProcessor.java); a blocked queue holds it.
- the json codec (logstash-plugins/logstash-codec-json, json.rb): a JSON object is one event, a top-level array
  one event per element; anything else, or malformed JSON, is one event {"message": body, "tags":
  ["_jsonparsefailure"]}.
- AF.conf's filter: an event whose token is not one of the known tokens is dropped (a parse failure has no
  token, so it goes too); a truthy `timestamp` sets @timestamp through the date filter with match ISO8601,
  which takes strings alone (logstash-plugins/logstash-filter-date, TextParserExecutor.java: "Cannot parse date
  for value of type ..."): anything else is tagged _dateparsefailure and keeps its arrival time; then headers,
  token, host and timestamp are removed.
- AF.conf's output: an event with tags is also written to /var/log/logstash/issues.txt (`issues` here); kind
  condorjob is indexed with document_id "%{cluster}-%{users}-%{Id}", so the last write of a job wins
  (`jobs`); every other kind is appended (`appended`). `index` is both.

`documents` holds every event the codec made, before the filter (token included): what reached Logstash.

Faults of the network or of a broken endpoint, each until restore():
- block(seconds): the queue is blocked: each request's events are indexed at once, its answer comes SECONDS
  later, or the ingress's 504 at gateway_timeout;
- fail_next(*statuses): the next requests get these statuses (with optional Retry-After), then 200 again;
- answer_always(status): every request gets this status;
- hang: every request is held until released or the client gives up (`hanging` is set once one is held);
- reset_mid_request(): the connection is reset after half the body was read: nothing kept;
- lose_replies(count): the events are indexed, then the connection is reset instead of the reply, so the
  client cannot know they arrived (`lost` holds those documents: the only ones that may arrive twice);
- refuse_documents(status, predicate): a request holding a document for which predicate is true gets status
  (an endpoint other than the AF one, which refuses no document on its merits);
- redirect_to(url): every request gets 302 with Location: url (an ingress pointing at a maintenance page);
- trickle(): every request gets 200 and then its body a byte every 0.2 s, for ever (a broken proxy);
- refuse(): nothing listens on the port;
- present(cert): the port serves a certificate of another CA.
"""
import datetime
import gzip
import http.server
import json
import socket
import ssl
import struct
import threading
import time
import zlib

# ingress-nginx's defaults: proxy-body-size "1m" (nginx's client_max_body_size) and proxy-read-timeout 60 s.
INGRESS_MAX_BODY = 1024 * 1024
INGRESS_READ_TIMEOUT = 60.0
REMOVED_FIELDS = ("headers", "token", "host", "timestamp")  # AF.conf's mutate


def iso8601_instant(value):
    """The Unix time a date filter with match ISO8601 reads from value, or None where it tags the event
    _dateparsefailure: a string alone (Joda's ISODateTimeFormat.dateTimeParser, a zone-less time in UTC, the
    container's zone)."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def sprintf_field(event, name):
    """A field as Logstash's sprintf writes it into "%{name}": a missing field stays "%{name}", an array is
    joined with commas."""
    if name not in event or event[name] is None:
        return "%%{%s}" % name
    value = event[name]
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def json_codec(body):
    """The events Logstash's json codec makes of a body: one per object, one per element of a top-level array
    of objects, or one _jsonparsefailure event holding the body."""
    try:
        payload = json.loads(body.decode("utf-8"))
    except ValueError:
        payload = None
    elements = payload if isinstance(payload, list) else [payload]
    if all(isinstance(element, dict) for element in elements):
        return [dict(element) for element in elements]
    return [{"message": body.decode("utf-8", "replace"), "tags": ["_jsonparsefailure"]}]


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
        if length > receiver.max_body:  # nginx reads and discards the body before it answers 413
            with receiver.lock:
                receiver.too_large += 1
            self._answer(413, None)
            return
        try:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            self._answer(400, None)
            return
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
        mime = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        events = json_codec(body) if mime == "application/json" else [{"message": body.decode("utf-8", "replace")}]
        if status == 200:
            status = receiver.judge(events)
        if status == 200:
            receiver.take(events, self.headers, self.client_address[0], lost=lose_reply)
            if receiver.delay:
                time.sleep(min(receiver.delay, receiver.gateway_timeout))
                if receiver.delay > receiver.gateway_timeout:
                    status = 504  # the ingress gave up on Logstash, which queued the events all the same
        if lose_reply:
            self._reset()
            return
        if receiver.trickling:
            self._trickle()
            return
        self._answer(status, retry_after)

    def _answer(self, status, retry_after):
        receiver = self.server.receiver
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
    """The AF endpoint on a local port (see the module's docstring); tokens: the tokens AF.conf knows."""

    def __init__(self, server_cert, ca_file, tokens=()):
        self.lock = threading.Lock()
        self.tokens = set(tokens)
        self.documents, self.requests, self.answers, self.lost = [], [], [], []
        self.appended, self.jobs, self.issues = [], {}, []
        self.max_body, self.gateway_timeout, self.delay = INGRESS_MAX_BODY, INGRESS_READ_TIMEOUT, 0.0
        self.too_large = 0  # bodies the ingress refused with 413
        self.always, self.resetting, self.replies_to_lose = None, False, 0
        self.refusals = []
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

    def take(self, events, headers, address, lost=False):
        """The pipeline, one worker: each event through AF.conf's filter into the index, in arrival order."""
        arrival = time.time()
        with self.lock:
            self.documents.extend(events)
            if lost:
                self.lost.extend(events)
            for event in events:
                self._index(dict(event, headers=dict(headers), host=address), arrival)

    def _index(self, event, arrival):
        if event.get("token") not in self.tokens:
            return  # AF.conf: drop {}
        if event.get("timestamp") not in (None, False):
            instant = iso8601_instant(event["timestamp"])
            if instant is None:
                event["tags"] = event.get("tags", []) + ["_dateparsefailure"]
            arrival = arrival if instant is None else instant
        kept = {key: value for key, value in event.items() if key not in REMOVED_FIELDS}
        kept.update({"@timestamp": arrival, "@version": "1"})
        if kept.get("tags"):
            self.issues.append(kept)
        if kept.get("kind") == "condorjob":
            key = "-".join(sprintf_field(kept, name) for name in ("cluster", "users", "Id"))
            self.jobs.pop(key, None)
            self.jobs[key] = kept
        else:
            self.appended.append(kept)

    @property
    def index(self):
        """What Elasticsearch holds: every appended event, and the last write of each condorjob id."""
        with self.lock:
            return self.appended + list(self.jobs.values())

    def block(self, seconds):
        """A blocked queue: events indexed at once, each answer SECONDS late (504 past gateway_timeout)."""
        self.delay = seconds

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

    def judge(self, events):
        """The status of a request whose events the endpoint would take: a refusal's status, or 200."""
        with self.lock:
            for status, predicate in self.refusals:
                if any(predicate(event) for event in events):
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
            self.refusals, self.delay = [], 0.0
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
