"""Delivery: POSTs documents to the endpoint over a pool of keep-alive connections (directly or through an
HTTP proxy), as JSON arrays within the endpoint's body limit, with retries inside a time budget, and says
which documents to keep for a later run.

What the central endpoint does with a request (ATLAS-Analytics/uc_ls_collectors, branch af: configs/AF.conf,
kube/af.yaml; logstash-plugins/logstash-input-http 3.6.1, the version Logstash 8.7.0 bundles): ingress-nginx
in front refuses a body over 1 MiB as sent (413); the http input answers 200 once the events are queued,
whatever its filter then does with them (an unknown token is dropped in silence); condorjob documents are
upserted under endpoint_key(), every other kind is appended. tests/receiver.py models all of it."""
import base64
import collections
import datetime
import gzip
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse

from afmetrics_settings import UsageError, split_url

log = logging.getLogger("afmetrics")


def with_token(document, token):
    return dict(document, token=token)


def endpoint_key(document):
    """The id under which the endpoint keeps document, replacing what it held under that id; None for a
    document it appends. AF.conf's elasticsearch output sets document_id => "%{cluster}-%{users}-%{Id}" for
    kind condorjob alone, so the last condorjob written for a job is what the index shows."""
    if document.get("kind") != "condorjob":
        return None
    return "%s-%s-%s" % (document.get("cluster"), document.get("users"), document.get("Id"))


def request_bodies(documents, token, batch_size, batch_bytes):
    """Yield (chunk, body): the documents in order, each chunk one POST's body as UTF-8 JSON with the token.

    batch_size 1: each document alone, a JSON object, as the old tool sent it. Otherwise a JSON array (the
    endpoint's json codec makes one event per element) of at most batch_size documents and batch_bytes bytes
    (gzip never makes a JSON text larger than that by more than its few header bytes, so the bound holds as
    sent); a document larger than batch_bytes on its own goes alone, for the endpoint to judge.
    """
    if batch_size <= 1:
        for document in documents:
            yield [document], json.dumps(with_token(document, token)).encode("utf-8")
        return
    chunk, encoded, size = [], [], 2  # the brackets
    for document in documents:
        text = json.dumps(with_token(document, token)).encode("utf-8")
        if chunk and (len(chunk) >= batch_size or size + len(text) + 1 > batch_bytes):
            yield chunk, b"[" + b",".join(encoded) + b"]"
            chunk, encoded, size = [], [], 2
        chunk.append(document)
        encoded.append(text)
        size += len(text) + 1  # and its comma
    if chunk:
        yield chunk, b"[" + b",".join(encoded) + b"]"


def network_failure(error):
    """A short reason for a urllib3 failure: its type, with the OS's or the inner error's words."""
    cause = getattr(error, "reason", None) or error  # MaxRetryError wraps the last attempt's failure
    text = str(cause)
    os_words = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    inner = [arg for arg in getattr(cause, "args", ()) if isinstance(arg, BaseException)]
    if os_words:
        detail = os_words.group(1).strip()
    elif "timed out" in text:
        detail = "timed out"
    else:  # e.g. ProtocolError('Connection aborted.', RemoteDisconnected('Remote end closed ...'))
        detail = str(inner[0]) if inner else ""
    return "%s (%s)" % (type(cause).__name__, detail) if detail else type(cause).__name__


# refused: (document, HTTP status) of each document the endpoint refused on its own merits.
Outcome = collections.namedtuple("Outcome", "undelivered refused retried")

# How POSTs reach the endpoint. proxy: the proxy's URL without credentials (what the logs show), or None for a
# direct connection; origin: where it was named ("the proxy setting", "HTTPS_PROXY", ...); headers: its
# Proxy-Authorization; bypassed: the environment's proxy that NO_PROXY set aside, for the log.
Route = collections.namedtuple("Route", "proxy origin headers bypassed")
DIRECT = Route(None, None, {}, None)


def environment_proxy(url):
    """(proxy, variable naming it) that requests takes from the environment for url, or (None, None).

    As requests does (utils.get_environ_proxies, then the URL's scheme, else "all"): the standard library's
    getproxies() reads <scheme>_proxy in any case, the lower-case one winning (https_proxy over HTTPS_PROXY;
    an empty one unsets it), and ALL_PROXY/all_proxy when there is none for the scheme.
    """
    import urllib.request  # not for debug runs

    scheme = urllib.parse.urlsplit(url).scheme
    proxies = urllib.request.getproxies()
    key = scheme if scheme in proxies else "all"
    value = proxies.get(key)
    if not value:
        return None, None
    names = [name for name in os.environ if name.lower() == key + "_proxy" and os.environ[name] == value]
    return value, (key + "_proxy" if key + "_proxy" in names else names[0] if names else "the system's proxy")


def bypasses_proxy(url):
    """True when NO_PROXY/no_proxy names url's host, as requests decides it: requests' own function (domain
    suffixes with or without a leading dot, host:port, IPv4 addresses and CIDR ranges, "*"), imported only
    when there is a proxy to set aside."""
    from requests.utils import should_bypass_proxies

    return should_bypass_proxies(url, no_proxy=None)


def parse_proxy(value, origin):
    """The Route through the proxy value names; a UsageError (never showing its credentials) when it cannot
    be one. As requests does: no scheme means http://; user:password@ (percent-encoded) is sent as Basic
    Proxy-Authorization."""
    try:
        parts = split_url(value.strip())
    except ValueError:
        raise UsageError("%s is not a proxy URL (http://HOST:PORT)" % origin)
    scheme = (parts.scheme or "http").lower()
    shown = "%s://%s%s" % (scheme, parts.host or "", ":%d" % parts.port if parts.port else "")
    if scheme not in ("http", "https"):
        raise UsageError("%s %s: only http:// and https:// proxies are supported" % (origin, shown))
    if not parts.host:
        raise UsageError("%s is not a proxy URL (http://HOST:PORT)" % origin)
    # The port urllib3 connects to when none is given, shown so that a missing :3128 is plain in the log.
    shown = "%s://%s:%d" % (scheme, parts.host, parts.port or (443 if scheme == "https" else 80))
    headers = {}
    user, _, password = (parts.auth or "").partition(":")
    if user:
        credentials = "%s:%s" % (urllib.parse.unquote(user), urllib.parse.unquote(password))
        try:
            encoded = credentials.encode("latin-1")  # as requests and curl send it
        except UnicodeEncodeError:
            encoded = credentials.encode("utf-8")
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(encoded).decode("ascii")
    return Route(shown, origin, headers, None)


def proxy_route(url, setting):
    """How POSTs to url go: through the proxy setting when it is set (it wins over the environment, NO_PROXY
    included, as a proxies= argument does in requests); when it is empty, through the proxy the environment
    names for url unless NO_PROXY sets it aside; else directly."""
    if setting and setting.strip():
        return parse_proxy(setting, "the proxy setting")
    value, variable = environment_proxy(url)
    if value is None:
        return DIRECT
    if bypasses_proxy(url):
        return DIRECT._replace(bypassed="%s (from %s)" % (parse_proxy(value, variable).proxy, variable))
    return parse_proxy(value, variable)


# What an answer says (RFC 9110). These refuse the documents themselves: a batch is split until the document
# at fault is alone. 413 is a body too large (the AF endpoint's ingress above 1 MiB): a document alone over the
# limit is dropped. 400 and 422 come from other endpoints (the AF one answers 400 only to a gzip body it cannot
# inflate); a document they refuse alone is dropped only when the endpoint took others (afmetrics_common).
REFUSE_DOCUMENTS = (400, 413, 422)
TOO_LARGE = 413
# Busy or broken, the request not taken: worth a retry within the budget. Every other answer (401, 403, 404
# during a redeploy, 405, ...) says the endpoint, not the document, is wrong: the documents are kept for a
# later run. 504 among them: a gateway that gave up waiting on an upstream that got the request whole
# (ingress-nginx's proxy-read-timeout, 60 s by default, in front of a blocked Logstash queue, which still
# indexes it), so sending it again now could index it twice.
RETRY_STATUSES = (429, 500, 502, 503)


def retry_after_seconds(value):
    """Seconds to wait from a Retry-After value, delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when
    it is neither. Written here because urllib3 raises InvalidHeader on a fraction such as "1.5"."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            import email.utils  # here: 15 ms of every run's start for a header that is rarely a date
            when = email.utils.parsedate_to_datetime(value)
            if when.tzinfo is None:  # RFC 9110: an HTTP-date is in GMT
                when = when.replace(tzinfo=datetime.timezone.utc)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):  # no date, or a year no clock reaches
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def telling_when_sent(pool_class, attempt):
    """pool_class (a urllib3 connection pool class) whose connections set attempt.sent_whole once a request
    went out whole: urllib3 reads an answer even after a reset while sending, so only the connection knows."""
    class Connection(pool_class.ConnectionCls):
        def request(self, *args, **kwargs):
            super().request(*args, **kwargs)
            attempt.sent_whole = True

    return type(pool_class.__name__, (pool_class,), {"ConnectionCls": Connection})


class Delivery:
    """POSTs documents over one pool of keep-alive connections, with retries inside a time budget.

    start_budget() starts the clock of one collector's delivery: send_budget seconds from then, never past
    the run's deadline. Once the endpoint failed (down, refusing the token, the budget used up) every
    further document is kept without a try; why_not says why.

    A request sent whole is never sent again in the same run: its answer is awaited as long as the budget
    allows (the AF endpoint's http input answers only once its queue took the events, which a blocked queue
    delays), and a request whose answer did not come is kept for the next run, which may then index its
    documents a second time (at-least-once: dropping them would lose those the endpoint never got). Only
    failures before the body went out (a refused connection, a reset while sending) and answers that say
    the request was not taken (429, 5xx but 504) are retried within the run.
    """

    RETRIES = 3
    CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0
    # A read timeout bounds each recv, not a reply: an endpoint trickling a byte at a time could hold a sender
    # for ever. Past the budget by this much, senders still waiting are left behind and their documents kept.
    STRAGGLER_GRACE = 5.0
    # No request starts with less of the budget left than this (or a quarter of the budget, when that is less) to
    # wait for its answer: sent whole, it would not be sent again, and the endpoint could index it while the
    # collector keeps it.
    ANSWER_WAIT = 1.0

    def __init__(self, opts, run_deadline):
        # urllib3 itself rather than requests on top of it: a quarter of the CPU per POST, which matters
        # at tens of thousands of condorjob documents a run. Imported here: debug runs stay light.
        import urllib3
        from urllib3.util.retry import Retry

        delivery = self
        # Set by the connection once a request's body went out whole, per sender thread.
        self.attempt = attempt = threading.local()

        class BudgetTimeout(urllib3.Timeout):
            # An answer is awaited for what is left of the budget when each attempt, retries included, waits.
            def clone(self):
                return BudgetTimeout(connect=self._connect, read=self._read, total=self.total)

            @property
            def read_timeout(self):
                return max(0.0, delivery.deadline - time.monotonic())

        self.BudgetTimeout = BudgetTimeout

        class BudgetRetry(Retry):
            # Backoff and Retry-After are honoured, but no wait may run past the budget.
            def _left(self):
                # What a wait may take: an attempt after it must still have time to hear its answer.
                return max(0.0, delivery.deadline - time.monotonic() - delivery.answer_wait)

            def get_backoff_time(self):
                return min(super().get_backoff_time(), self._left())

            def get_retry_after(self, response):
                value = response.headers.get("Retry-After")
                after = None if value is None else retry_after_seconds(value)
                return None if after is None else min(after, self.backoff_max, self._left())

            def is_exhausted(self):
                return super().is_exhausted() or self._left() <= 0

            def increment(self, *args, **kwargs):
                if kwargs.get("error") is not None and getattr(attempt, "sent_whole", False):
                    raise kwargs["error"]  # the endpoint may have it: not again in this run
                attempt.sent_whole = False
                return super().increment(*args, **kwargs)

        self.urllib3, self.opts = urllib3, opts
        self.run_deadline = run_deadline
        self.deadline = min(time.monotonic() + opts.send_budget, run_deadline)
        self.endpoint_down, self.budget_used_up, self.lost_answer = None, False, None
        self.accepted = 0  # documents the endpoint took since start_budget()
        self.answer_wait = min(self.ANSWER_WAIT, opts.send_budget / 4)
        retry = BudgetRetry(total=self.RETRIES, backoff_factor=0.5, backoff_jitter=0.5, backoff_max=10,
                            status_forcelist=RETRY_STATUSES, allowed_methods=None,
                            respect_retry_after_header=True, raise_on_status=False)
        # TLS is always verified: against ca_bundle when given, else the system's CAs.
        pool = dict(maxsize=max(1, opts.connections), block=True, retries=retry, cert_reqs="CERT_REQUIRED",
                    ca_certs=opts.ca_bundle or None)
        pool_classes = {scheme: telling_when_sent(pool_class, attempt)
                        for scheme, pool_class in urllib3.poolmanager.pool_classes_by_scheme.items()}
        self.route = proxy_route(opts.url, getattr(opts, "proxy", ""))
        if self.route.proxy:
            # HTTPS through CONNECT: the tunnel carries TLS from here to the endpoint, verified as above (an
            # https:// proxy's own certificate too); each kept-alive connection is one tunnel.
            self.pool = urllib3.ProxyManager(self.route.proxy, proxy_headers=self.route.headers, **pool)
            self.pool.pool_classes_by_scheme = pool_classes
            log.info("sending to %s through proxy %s (from %s)", opts.url, self.route.proxy, self.route.origin)
        else:
            self.pool = urllib3.PoolManager(**pool)
            self.pool.pool_classes_by_scheme = pool_classes
            if self.route.bypassed:
                log.info("sending to %s directly: NO_PROXY names its host (not through %s)", opts.url,
                         self.route.bypassed)
        self.headers = {"Content-Type": "application/json"}
        if opts.gzip:
            self.headers["Content-Encoding"] = "gzip"

    def start_budget(self):
        self.deadline = min(time.monotonic() + self.opts.send_budget, self.run_deadline)
        self.budget_used_up, self.accepted, self.lost_answer = False, 0, None

    @property
    def why_not(self):
        """Why documents were kept: the endpoint's failure, an answer lost, or the budget."""
        if self.endpoint_down or self.lost_answer:
            return self.endpoint_down or self.lost_answer
        if self.deadline >= self.run_deadline:
            return "run budget of %g s used up" % self.opts.run_budget
        return "time budget of %g s used up" % self.opts.send_budget

    def _post(self, body):
        """(verdict, failures retried past): verdict True when delivered, False when the documents should be
        kept, else the HTTP status refusing them."""
        remaining = self.deadline - time.monotonic()
        if self.endpoint_down or self.budget_used_up or remaining <= self.answer_wait:
            self.budget_used_up = not self.endpoint_down
            return False, []
        if self.opts.gzip:
            body = gzip.compress(body)
        # Connecting, with its retries, must fit in what is left of the budget; an answer is awaited for all of it.
        timeout = self.BudgetTimeout(connect=min(self.CONNECT_TIMEOUT, remaining / (self.RETRIES + 1)),
                                     read=remaining)
        self.attempt.sent_whole = False
        try:
            # No redirects: a maintenance page that answers 200 elsewhere would take the documents and the token.
            reply = self.pool.request("POST", self.opts.url, body=body, headers=self.headers, timeout=timeout,
                                      redirect=False)
        except self.urllib3.exceptions.HTTPError as error:
            failure = self._failure(error)
            if self.attempt.sent_whole and not self.lost_answer and not isinstance(
                    getattr(error, "reason", error), self.urllib3.exceptions.ReadTimeoutError):
                # One answer lost (a kept-alive connection the endpoint closed as the request came, a reply
                # lost): that request's documents are kept and the rest still go. A second: this endpoint loses
                # answers, and every request sent would be indexed now and again by the next run.
                self.lost_answer = failure
            else:
                self.endpoint_down = failure
            return False, []
        retried = ["HTTP %d" % attempt.status if attempt.status else network_failure(attempt.error)
                   for attempt in (reply.retries.history if reply.retries else ())]
        if reply.status < 300:
            return True, retried
        if reply.status in REFUSE_DOCUMENTS:
            return reply.status, retried
        # Every other document would meet the same answer.
        location = reply.headers.get("Location")
        self.endpoint_down = "%s answered HTTP %d%s" % (self.opts.url, reply.status,
                                                        " (a redirect to %s)" % location if location else "")
        return False, []

    def _failure(self, error):
        """Why a request got no answer, for the log."""
        through = " through proxy %s (from %s)" % (self.route.proxy, self.route.origin) if self.route.proxy else ""
        cause, exceptions = getattr(error, "reason", error), self.urllib3.exceptions
        if isinstance(cause, exceptions.ProxyError) and isinstance(cause.original_error, exceptions.SSLError):
            return "TLS verification of the https:// proxy %s (from %s) failed" % (self.route.proxy, self.route.origin)
        if isinstance(cause, exceptions.SSLError):
            return "TLS verification of %s failed%s" % (self.opts.url, through)
        if self.attempt.sent_whole:
            if isinstance(cause, exceptions.ReadTimeoutError):
                return "no answer from %s%s within the time budget to a request sent whole" % (self.opts.url, through)
            return "no answer from %s%s to a request sent whole: %s" % (self.opts.url, through, network_failure(error))
        return "cannot reach %s%s: %s" % (self.opts.url, through, network_failure(error))

    def _send(self, chunk, body, token):
        """Send one chunk of documents as body: (to keep, [(document, status)] refused, failures retried past)."""
        verdict, retried = self._post(body)
        if verdict is True:
            return [], [], retried
        if verdict is False:
            return chunk, [], retried
        if len(chunk) > 1:
            # The endpoint refused the batch: halves until the documents at fault stand alone.
            # Said as a retry: an admin seeing it often lowers batch_size.
            halves = [part for half in (chunk[:len(chunk) // 2], chunk[len(chunk) // 2:])
                      for part in request_bodies(half, token, len(half), float("inf"))]
            results = [self._send(part, part_body, token) for part, part_body in halves]
            split = ["HTTP %d (batch split)" % verdict]
            return ([d for result in results for d in result[0]], [r for result in results for r in result[1]],
                    retried + split + [f for result in results for f in result[2]])
        return [], [(chunk[0], verdict)], retried

    def deliver(self, documents, token):
        """Send documents (any iterable), oldest first, and return an Outcome: what to keep, what the endpoint
        refused (the caller decides whether to drop it), and the failures that retries got past."""
        workers = max(1, self.opts.connections)
        # A few requests in flight hide the endpoint's round trip; more would only load the receiver. Each
        # sender pulls its next chunk from the collector itself, so documents are made, sent and forgotten as
        # the collector yields them. Not a thread pool: a future and a hand-over per document cost about 8% more
        # CPU (bench/send_documents.py, 10,000 documents).
        chunks = enumerate(request_bodies(documents, token, self.opts.batch_size, self.opts.batch_bytes))
        lock = threading.Lock()
        undelivered, retried, refused, failure, in_flight = [], [], [], [], {}
        closed = []  # set once the caller stopped waiting: what a straggler brings back then is ignored

        def send_chunks():
            try:
                while True:
                    with lock:
                        number, (chunk, body) = next(chunks, (None, (None, None))) if not (failure or closed) \
                            else (None, (None, None))
                        if chunk is None:
                            return
                        in_flight[number] = chunk
                    try:
                        kept, refused_here, retried_past = self._send(chunk, body, token)
                    except Exception as error:  # a bug of ours in one request: keep its documents, not the run's
                        self.endpoint_down = "delivery failed: %s: %s" % (type(error).__name__, error)
                        kept, refused_here, retried_past = chunk, [], []
                    with lock:
                        if closed:
                            return
                        del in_flight[number]
                        self.accepted += len(chunk) - len(kept) - len(refused_here)
                        retried.extend(retried_past)
                        refused.extend(refused_here)
                        if kept:
                            undelivered.append((number, kept))
            except BaseException as error:  # raised again in the caller's thread
                with lock:
                    failure.append(error)

        senders = [threading.Thread(target=send_chunks, daemon=True) for _ in range(workers)]
        for sender in senders:
            sender.start()
        give_up = self.deadline + self.STRAGGLER_GRACE
        for sender in senders:
            sender.join(max(0.0, give_up - time.monotonic()))
        with lock:
            closed.append(True)
            if failure:
                raise failure[0]
            if in_flight:
                self.endpoint_down = self.endpoint_down or "%s did not finish answering within the time budget" \
                    % self.opts.url
                undelivered.extend(in_flight.items())
                undelivered.extend((number, chunk) for number, (chunk, _) in chunks)  # the rest, never tried
        undelivered.sort(key=lambda numbered: numbered[0])
        return Outcome([d for _, chunk in undelivered for d in chunk], refused, retried)

    def log_retries(self, retried, logger):
        """One line for the failures that retries got past: the endpoint accepted in the end."""
        counts = collections.Counter(retried)
        if counts:
            logger.warning("%s failed %s before accepting: retried", self.opts.url,
                           ", ".join("%s x%d" % item for item in sorted(counts.items())))
