"""Delivery: POSTs documents to the endpoint over a pool of keep-alive connections, with retries inside a
time budget, and says which documents to keep for a later run."""
import collections
import datetime
import email.utils
import gzip
import itertools
import json
import math
import re
import threading
import time


def with_token(document, token):
    return dict(document, token=token)


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


Outcome = collections.namedtuple("Outcome", "undelivered refused retried")

# What an answer says (RFC 9110). These refuse the documents themselves: a single one is dropped with a log
# line, a batch is split until the document at fault is alone. 413 is a batch too large, or a document that
# no batch size can help.
REFUSE_DOCUMENTS = (400, 413, 422)
# Busy or broken: worth a retry within the budget. Every other answer (401, 403, 404 during a redeploy,
# 405, ...) says the endpoint, not the document, is wrong: the documents are kept for a later run.
RETRY_STATUSES = (429, 500, 502, 503, 504)


def retry_after_seconds(value):
    """Seconds to wait from a Retry-After value, delay-seconds or an HTTP-date (RFC 9110 10.2.3); None when
    it is neither. Written here because urllib3 raises InvalidHeader on a fraction such as "1.5"."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110: an HTTP-date is in GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class Delivery:
    """POSTs documents over one pool of keep-alive connections, with retries inside a time budget.

    start_budget() starts the clock of one collector's delivery: send_budget seconds from then, never past
    the run's deadline. Once the endpoint failed (down, refusing the token, the budget used up) every
    further document is kept without a try; why_not says why.
    """

    RETRIES = 3
    CONNECT_TIMEOUT, READ_TIMEOUT = 10.0, 30.0

    def __init__(self, opts, run_deadline):
        # urllib3 itself rather than requests on top of it: a quarter of the CPU per POST, which matters
        # at tens of thousands of condorjob documents a run. Imported here: debug runs stay light.
        import urllib3
        from urllib3.util.retry import Retry

        delivery = self

        class BudgetRetry(Retry):
            # Backoff and Retry-After are honoured, but no wait may run past the budget.
            def _left(self):
                return max(0.0, delivery.deadline - time.monotonic())

            def get_backoff_time(self):
                return min(super().get_backoff_time(), self._left())

            def get_retry_after(self, response):
                value = response.headers.get("Retry-After")
                after = None if value is None else retry_after_seconds(value)
                return None if after is None else min(after, self.backoff_max, self._left())

            def is_exhausted(self):
                return super().is_exhausted() or self._left() <= 0

        self.urllib3, self.opts = urllib3, opts
        self.run_deadline = run_deadline
        self.deadline = min(time.monotonic() + opts.send_budget, run_deadline)
        self.endpoint_down, self.budget_used_up = None, False
        self.batched = opts.batch_size > 1
        retry = BudgetRetry(total=self.RETRIES, backoff_factor=0.5, backoff_jitter=0.5, backoff_max=10,
                            status_forcelist=RETRY_STATUSES, allowed_methods=None,
                            respect_retry_after_header=True, raise_on_status=False)
        # TLS is always verified: against ca_bundle when given, else the system's CAs.
        self.pool = urllib3.PoolManager(maxsize=max(1, opts.connections), block=True, retries=retry,
                                        cert_reqs="CERT_REQUIRED", ca_certs=opts.ca_bundle or None)
        self.headers = {"Content-Type": "application/json"}
        if opts.gzip:
            self.headers["Content-Encoding"] = "gzip"

    def start_budget(self):
        self.deadline = min(time.monotonic() + self.opts.send_budget, self.run_deadline)
        self.budget_used_up = False

    @property
    def why_not(self):
        """Why documents were kept: the endpoint's failure, or the budget."""
        if self.endpoint_down:
            return self.endpoint_down
        if self.deadline >= self.run_deadline:
            return "run budget of %g s used up" % self.opts.run_budget
        return "time budget of %g s used up" % self.opts.send_budget

    def _post(self, payload):
        """(verdict, failures retried past): verdict True when delivered, False when the payload should be
        kept, else the HTTP status refusing the documents."""
        remaining = self.deadline - time.monotonic()
        if self.endpoint_down or self.budget_used_up or remaining <= 0:
            self.budget_used_up = not self.endpoint_down
            return False, []
        body = json.dumps(payload).encode("utf-8")
        if self.opts.gzip:
            body = gzip.compress(body)
        # Every attempt, retries included, must fit in what is left of the budget.
        per_attempt = remaining / (self.RETRIES + 1)
        timeout = self.urllib3.Timeout(connect=min(self.CONNECT_TIMEOUT, per_attempt),
                                       read=min(self.READ_TIMEOUT, per_attempt))
        try:
            reply = self.pool.request("POST", self.opts.url, body=body, headers=self.headers, timeout=timeout)
        except self.urllib3.exceptions.HTTPError as error:
            if isinstance(getattr(error, "reason", error), self.urllib3.exceptions.SSLError):
                self.endpoint_down = "TLS verification of %s failed" % self.opts.url
            else:
                self.endpoint_down = "cannot reach %s: %s" % (self.opts.url, network_failure(error))
            return False, []
        retried = ["HTTP %d" % attempt.status if attempt.status else network_failure(attempt.error)
                   for attempt in (reply.retries.history if reply.retries else ())]
        if reply.status < 300:
            return True, retried
        if reply.status in REFUSE_DOCUMENTS:
            return reply.status, retried
        # Every other document would meet the same answer.
        self.endpoint_down = "%s answered HTTP %d" % (self.opts.url, reply.status)
        return False, []

    def _send(self, chunk, token, logger):
        """Send one chunk of documents: (to keep, number refused for good, failures retried past)."""
        payload = [with_token(d, token) for d in chunk] if self.batched else with_token(chunk[0], token)
        verdict, retried = self._post(payload)
        if verdict is True:
            return [], 0, retried
        if verdict is False:
            return chunk, 0, retried
        if len(chunk) > 1:
            # The endpoint refused the batch: halves until the documents at fault stand alone.
            # Said as a retry: an admin seeing it often lowers batch_size.
            half = len(chunk) // 2
            first, second = self._send(chunk[:half], token, logger), self._send(chunk[half:], token, logger)
            split = ["HTTP %d (batch split)" % verdict]
            return first[0] + second[0], first[1] + second[1], retried + split + first[2] + second[2]
        logger.error("%s refused a %s document with HTTP %d: dropped", self.opts.url, chunk[0]["kind"], verdict)
        return [], 1, retried

    def deliver(self, documents, token, logger):
        """Send documents (any iterable), oldest first, and return an Outcome: what to keep, how many were
        refused for good (each logged and dropped), and the failures that retries got past."""
        size, workers = max(1, self.opts.batch_size), max(1, self.opts.connections)
        # A few requests in flight hide the endpoint's round trip; more would only load the receiver. Each
        # sender pulls its next chunk from the collector itself, so documents are made, sent and forgotten as
        # the collector yields them. Not a thread pool: a future and a hand-over per document cost about 8% more
        # CPU (bench/send_documents.py, 10,000 documents).
        documents = iter(documents)
        chunks = enumerate(iter(lambda: list(itertools.islice(documents, size)), []))
        lock = threading.Lock()
        undelivered, retried, refused, failure = [], [], [], []

        def send_chunks():
            try:
                while True:
                    with lock:
                        number, chunk = next(chunks, (None, None)) if not failure else (None, None)
                    if chunk is None:
                        return
                    kept, refused_count, retried_past = self._send(chunk, token, logger)
                    with lock:
                        retried.extend(retried_past)
                        refused.append(refused_count)
                        if kept:
                            undelivered.append((number, kept))
            except BaseException as error:  # raised again in the caller's thread
                with lock:
                    failure.append(error)

        senders = [threading.Thread(target=send_chunks, daemon=True) for _ in range(workers)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        if failure:
            raise failure[0]
        undelivered.sort(key=lambda numbered: numbered[0])
        return Outcome([d for _, chunk in undelivered for d in chunk], sum(refused), retried)

    def log_retries(self, retried, logger):
        """One line for the failures that retries got past: the endpoint accepted in the end."""
        counts = collections.Counter(retried)
        if counts:
            logger.warning("%s failed %s before accepting: retried", self.opts.url,
                           ", ".join("%s x%d" % item for item in sorted(counts.items())))
