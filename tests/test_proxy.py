"""Behind a proxy (issue 11): collectors run as cron runs them POST through a real tinyproxy on loopback to the
real HTTPS receiver, choosing the proxy as requests does from HTTPS_PROXY/https_proxy/ALL_PROXY and NO_PROXY,
or from the proxy setting, which wins. TLS is verified end to end through CONNECT; a proxy that is down or
refuses is one log line naming it (never its credentials), the documents kept, exit 1."""
import base64
import json
import time

import pytest
import requests
import trustme

import afmetrics_delivery
from conftest import log_lines, spool_documents
from proxy import PASSWORD, USER, free_port

TOKEN = "tok-proxy-5e21b9"
PROXY_VARIABLES = [name for lower in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
                   for name in (lower, lower.upper())]


@pytest.fixture(autouse=True)
def no_proxy_of_the_developer(monkeypatch):
    """What the developer's shell holds never takes part (an empty https_proxy would unset HTTPS_PROXY: the
    variables go); the collectors' environment is a copy of this process's."""
    for name in PROXY_VARIABLES + ["REQUEST_METHOD"]:
        monkeypatch.delenv(name, raising=False)


def environment(**variables):
    return dict(AFMETRICS_TOKEN=TOKEN, **variables)


def run_ssh(run_collector, receiver, sessions, tmp_path, *args, env=None, url=None):
    """ssh.py (one document: alice and bob) against the receiver, state in tmp_path/state."""
    target = ["-u", url, "--ca-bundle", receiver.ca_file] if url else receiver.args()
    return run_collector("ssh.py", "-v", "--utmp", sessions, "--state-dir", tmp_path / "state", *target, *args,
                         env=env if env is not None else environment(), cwd=tmp_path)


def errors(done):
    return [line for line in log_lines(done.stderr) if not line.startswith(("INFO", "DEBUG"))]


# --- Which proxy: as requests chooses it -------------------------------------------------------------------

A, B = "http://proxy-a.example.org:3128", "http://proxy-b.example.org:8080"
CHOICES = [
    # (endpoint URL, environment, the proxy used: A, B or None for a direct connection)
    ("https://af.example.org/", {"HTTPS_PROXY": A}, A),
    ("https://af.example.org/", {"https_proxy": A}, A),
    ("https://af.example.org/", {"HTTPS_PROXY": B, "https_proxy": A}, A),  # lower case wins
    ("https://af.example.org/", {"HTTPS_PROXY": A, "https_proxy": ""}, None),  # an empty one unsets it
    ("https://af.example.org/", {"ALL_PROXY": A}, A),
    ("https://af.example.org/", {"all_proxy": B, "HTTPS_PROXY": A}, A),  # the scheme's own first
    ("https://af.example.org/", {"HTTP_PROXY": A}, None),  # http_proxy is for http:// URLs
    ("http://af.example.org/", {"HTTP_PROXY": A, "HTTPS_PROXY": B}, A),
    ("https://af.example.org/", {"HTTPS_PROXY": "proxy-a.example.org:3128"}, A),  # no scheme: http://
    # NO_PROXY, as an admin writes it
    ("https://127.0.0.1:8443/", {"HTTPS_PROXY": A, "NO_PROXY": "127.0.0.1"}, None),
    ("https://127.0.0.1:8443/", {"HTTPS_PROXY": A, "NO_PROXY": "localhost"}, A),  # no name lookup
    ("https://localhost:8443/", {"HTTPS_PROXY": A, "NO_PROXY": "localhost"}, None),
    ("https://localhost:8443/", {"HTTPS_PROXY": A, "NO_PROXY": "127.0.0.1"}, A),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "NO_PROXY": ".example.org"}, None),
    ("https://example.org/", {"HTTPS_PROXY": A, "NO_PROXY": ".example.org"}, None),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "NO_PROXY": "example.org"}, None),
    # requests 2.34 matches whole labels only; 2.32.5 (the Python 3.9 pin) and 2.33.0 a bare suffix: the
    # installed requests decides.
    ("https://notexample.org/", {"HTTPS_PROXY": A, "NO_PROXY": "example.org"}, "as requests"),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "NO_PROXY": "AF.Example.ORG"}, None),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "NO_PROXY": "localhost, .example.org"}, None),
    ("https://af.example.org:8443/", {"HTTPS_PROXY": A, "NO_PROXY": "af.example.org:8443"}, None),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "NO_PROXY": "af.example.org:8443"}, A),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "NO_PROXY": "*"}, None),
    ("https://10.1.2.3/", {"HTTPS_PROXY": A, "NO_PROXY": "10.0.0.0/8"}, None),
    ("https://10.1.2.3/", {"HTTPS_PROXY": A, "NO_PROXY": "192.168.0.0/16,10.1.2.4"}, A),
    ("https://af.example.org/", {"HTTPS_PROXY": A, "no_proxy": "other.org", "NO_PROXY": ".example.org"}, A),
    ("https://af.example.org/", {"ALL_PROXY": A, "no_proxy": "example.org"}, None),
]


@pytest.mark.parametrize("url, variables, expected", CHOICES,
                         ids=["%s %s" % (url, variables) for url, variables, _ in CHOICES])
def test_proxy_is_chosen_as_requests_chooses_it(monkeypatch, url, variables, expected):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    # What requests itself would use for a POST to url (Session.request merges the environment so).
    proxies = requests.Session().merge_environment_settings(url, {}, None, None, None)["proxies"]
    chosen = requests.utils.select_proxy(url, proxies)
    by_requests = requests.utils.prepend_scheme_if_needed(chosen, "http") if chosen else None
    if expected != "as requests":
        assert by_requests == expected
    assert afmetrics_delivery.proxy_route(url, "").proxy == by_requests
    # The setting wins over all of it, NO_PROXY included.
    assert afmetrics_delivery.proxy_route(url, B).proxy == B


# --- Through a real proxy ----------------------------------------------------------------------------------

@pytest.mark.parametrize("named_by", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "AFMETRICS_PROXY", "--proxy",
                                      "config file"])
def test_documents_go_through_the_proxy(run_collector, receiver, sessions, tinyproxy, tmp_path, named_by):
    env, args = environment(AFMETRICS_CONNECTIONS="1"), []
    if named_by == "--proxy":
        args = ["--proxy", tinyproxy.url]
    elif named_by == "config file":
        config = tmp_path / "afmetrics.conf"
        config.write_text("[afmetrics]\nproxy = %s\n" % tinyproxy.url)
        args = ["--config", config]
    else:
        env[named_by] = tinyproxy.url
    done = run_collector("afmetrics_collector", "-v", "-s", "--host", "--disk", "/", "--utmp", sessions,
                         "--state-dir", tmp_path / "state", *receiver.args(), *args, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert receiver.kinds() == ["CPU", "DISK", "MEM", "ssh"]
    assert receiver.of_kind("ssh")[0]["users"] == ["alice", "bob"]
    # One tunnel, kept alive for the four POSTs.
    assert tinyproxy.connects() == ["127.0.0.1:%d" % receiver.port]
    origin = {"--proxy": "the proxy setting", "config file": "the proxy setting",
              "AFMETRICS_PROXY": "the proxy setting"}.get(named_by, named_by)
    assert ("INFO:afmetrics:sending to %s through proxy %s (from %s)" % (receiver.url, tinyproxy.url, origin)
            in log_lines(done.stderr))
    assert not errors(done)


@pytest.mark.parametrize("case", ["https_proxy over HTTPS_PROXY", "setting over HTTPS_PROXY and NO_PROXY",
                                  "empty setting: the environment"])
def test_which_proxy_wins(run_collector, receiver, sessions, tinyproxy, tmp_path, case):
    down = "http://127.0.0.1:%d" % free_port()
    if case == "https_proxy over HTTPS_PROXY":
        args, env = [], environment(HTTPS_PROXY=down, https_proxy=tinyproxy.url)
    elif case == "setting over HTTPS_PROXY and NO_PROXY":
        args, env = ["--proxy", tinyproxy.url], environment(HTTPS_PROXY=down, NO_PROXY="127.0.0.1")
    else:
        args, env = ["--proxy", ""], environment(HTTPS_PROXY=tinyproxy.url)
    done = run_ssh(run_collector, receiver, sessions, tmp_path, *args, env=env)
    assert done.returncode == 0, done.stderr
    assert receiver.kinds() == ["ssh"]
    assert tinyproxy.connects() == ["127.0.0.1:%d" % receiver.port]


@pytest.mark.parametrize("no_proxy, host, bypassed", [
    ("127.0.0.1", "127.0.0.1", True),
    ("localhost", "localhost", True),
    ("*", "127.0.0.1", True),
    ("127.0.0.0/8", "127.0.0.1", True),
    (".example.org,localhost", "localhost", True),
    (".example.org", "127.0.0.1", False),
    ("localhost", "127.0.0.1", False),
])
def test_no_proxy_bypasses_the_proxy(run_collector, receiver, sessions, tinyproxy, tmp_path, no_proxy, host,
                                     bypassed):
    url = "https://%s:%d/" % (host, receiver.port)
    done = run_ssh(run_collector, receiver, sessions, tmp_path, url=url,
                   env=environment(HTTPS_PROXY=tinyproxy.url, NO_PROXY=no_proxy))
    assert done.returncode == 0, done.stderr
    assert receiver.kinds() == ["ssh"]
    if bypassed:
        assert tinyproxy.connects() == []
        assert ("INFO:afmetrics:sending to %s directly: NO_PROXY names its host (not through %s (from "
                "HTTPS_PROXY))" % (url, tinyproxy.url) in log_lines(done.stderr))
    else:
        assert tinyproxy.connects() == ["%s:%d" % (host, receiver.port)]


def test_tls_is_verified_end_to_end_through_the_proxy(run_collector, receiver, sessions, tinyproxy, tmp_path):
    receiver.present(trustme.CA(organization_name="someone else").issue_cert("127.0.0.1", "localhost"))
    done = run_ssh(run_collector, receiver, sessions, tmp_path, env=environment(HTTPS_PROXY=tinyproxy.url))
    assert done.returncode == 1
    # Through the proxy (each attempt a tunnel of its own), and refused at the far end of the tunnel.
    assert set(tinyproxy.connects()) == {"127.0.0.1:%d" % receiver.port}
    assert errors(done) == ["ERROR:ssh:1 document(s) not delivered (TLS verification of %s failed through proxy "
                            "%s (from HTTPS_PROXY)): kept for the next run" % (receiver.url, tinyproxy.url)]
    assert receiver.documents == []
    assert [d["users"] for d in spool_documents(tmp_path / "state" / "spool-ssh.jsonl")] == [["alice", "bob"]]


def test_documents_go_through_an_https_proxy(run_collector, receiver, sessions, tinyproxy, start_https_proxy,
                                            certificate_authority, tmp_path):
    """TLS to the proxy, and the endpoint's TLS inside its tunnel: the proxy's certificate is verified against
    ca_bundle (here the receiver's CA issued both)."""
    proxy = start_https_proxy(certificate_authority.issue_cert("127.0.0.1"))
    done = run_ssh(run_collector, receiver, sessions, tmp_path, env=environment(HTTPS_PROXY=proxy.url))
    assert done.returncode == 0, done.stderr
    assert [d["users"] for d in receiver.of_kind("ssh")] == [["alice", "bob"]]
    assert tinyproxy.connects() == ["127.0.0.1:%d" % receiver.port]
    assert ("INFO:afmetrics:sending to %s through proxy %s (from HTTPS_PROXY)" % (receiver.url, proxy.url)
            in log_lines(done.stderr))
    assert not errors(done)


def test_https_proxy_with_a_certificate_from_another_ca_is_refused(run_collector, receiver, sessions, tinyproxy,
                                                                    start_https_proxy, tmp_path):
    proxy = start_https_proxy(trustme.CA(organization_name="someone else").issue_cert("127.0.0.1"))
    done = run_ssh(run_collector, receiver, sessions, tmp_path, env=environment(HTTPS_PROXY=proxy.url))
    assert done.returncode == 1
    assert tinyproxy.connects() == []  # nothing reached the proxy itself
    assert errors(done) == ["ERROR:ssh:1 document(s) not delivered (TLS verification of the https:// proxy %s "
                            "(from HTTPS_PROXY) failed): kept for the next run" % proxy.url]
    assert [d["users"] for d in spool_documents(tmp_path / "state" / "spool-ssh.jsonl")] == [["alice", "bob"]]


@pytest.mark.parametrize("fault", ["down", "refuses CONNECT", "wrong credentials"])
def test_failing_proxy_is_one_line_and_keeps_the_documents(run_collector, receiver, sessions, start_tinyproxy,
                                                           tmp_path, fault):
    if fault == "down":
        port, reason = free_port(), "ProxyError (Connection refused)"
    else:
        # tinyproxy refuses CONNECT to a port not listed (403) and credentials it does not know (401, where
        # 407 is the standard's status).
        proxy = start_tinyproxy(connect_ports=[443]) if fault == "refuses CONNECT" else \
            start_tinyproxy(basic_auth=(USER, "other-pw"))
        port = proxy.port
        reason = "ProxyError (Tunnel connection failed: %s)" % (
            "403 Access violation" if fault == "refuses CONNECT" else "401 Unauthorized")
    # Credentials in the URL, percent-encoded as an admin must write a "-" or "@" in them.
    with_credentials = "http://%s:%s@127.0.0.1:%d" % (USER, PASSWORD.replace("-", "%2D"), port)
    started = time.monotonic()
    done = run_ssh(run_collector, receiver, sessions, tmp_path, "-vv", env=environment(HTTPS_PROXY=with_credentials))
    assert done.returncode == 1
    assert time.monotonic() - started < 30
    assert errors(done) == ["ERROR:ssh:1 document(s) not delivered (cannot reach %s through proxy "
                            "http://127.0.0.1:%d (from HTTPS_PROXY): %s): kept for the next run"
                            % (receiver.url, port, reason)]
    assert receiver.documents == []
    assert [d["users"] for d in spool_documents(tmp_path / "state" / "spool-ssh.jsonl")] == [["alice", "bob"]]
    secrets = [TOKEN, PASSWORD, PASSWORD.replace("-", "%2D"), "%s:" % USER,
               base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()]
    assert not [secret for secret in secrets if secret in done.stderr]


def test_proxy_credentials_are_sent_and_never_logged(run_collector, receiver, sessions, start_tinyproxy, tmp_path):
    proxy = start_tinyproxy(basic_auth=(USER, PASSWORD))
    with_credentials = proxy.url_with(USER, PASSWORD.replace("-", "%2D"))
    done = run_ssh(run_collector, receiver, sessions, tmp_path, "-vv", "--proxy", with_credentials)
    assert done.returncode == 0, done.stderr
    assert receiver.kinds() == ["ssh"]
    assert proxy.connects() == ["127.0.0.1:%d" % receiver.port]
    assert "through proxy %s (from the proxy setting)" % proxy.url in done.stderr
    secrets = [TOKEN, PASSWORD, PASSWORD.replace("-", "%2D"), "%s:" % USER,
               base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()]
    assert not [secret for secret in secrets if secret in done.stderr]


@pytest.mark.parametrize("proxy, shown", [
    ("socks5://%s:%s@127.0.0.1:1080" % (USER, PASSWORD), "the proxy setting socks5://127.0.0.1:1080: only http:// "
                                                          "and https:// proxies are supported"),
    ("http://%s:%s@127.0.0.1:x" % (USER, PASSWORD), "the proxy setting is not a proxy URL (http://HOST:PORT)"),
    ("http://%s:%s@127.0.0.1:99999" % (USER, PASSWORD), "the proxy setting is not a proxy URL (http://HOST:PORT)"),
    ("http://%s:%s@127.0.0.1:0" % (USER, PASSWORD), "the proxy setting is not a proxy URL (http://HOST:PORT)"),
    ("http://%s:%s@[2001:db8::10:3128" % (USER, PASSWORD), "the proxy setting is not a proxy URL (http://HOST:PORT)"),
])
def test_unusable_proxy_is_a_usage_error(run_collector, receiver, sessions, tmp_path, proxy, shown):
    for env, args, origin in ((environment(), ["--proxy", proxy], "the proxy setting"),
                              (environment(HTTPS_PROXY=proxy), [], "HTTPS_PROXY")):
        done = run_ssh(run_collector, receiver, sessions, tmp_path, *args, env=env)
        assert done.returncode == 2
        assert [line for line in errors(done) if "every user sees in ps" not in line] == [
            "ERROR:afmetrics:" + shown.replace("the proxy setting", origin)]
        assert PASSWORD not in done.stderr
        assert not (tmp_path / "state").exists()  # up front: before anything is written
    assert receiver.requests == []


def test_a_thousand_documents_through_the_proxy_with_ten_connections(run_collector, receiver, sessions, tinyproxy,
                                                                     tmp_path):
    # The bench's path: a spool of 1000 documents sent first, over the default 10 connections, each a tunnel.
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    collected = int(time.time() * 1000) - 60000
    (state / "spool-ssh.jsonl").write_text("".join(
        json.dumps({"kind": "ssh", "cluster": "", "login_node": "node", "ssh_user_count": 1,
                    "users": ["user%04d" % i], "timestamp": collected}) + "\n" for i in range(1000)))
    started = time.monotonic()
    done = run_ssh(run_collector, receiver, sessions, tmp_path, env=environment(HTTPS_PROXY=tinyproxy.url))
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert len(receiver.documents) == 1001
    assert sorted(d["users"][0] for d in receiver.documents if "timestamp" in d) == \
        ["user%04d" % i for i in range(1000)]
    connects = tinyproxy.connects()
    assert 1 <= len(connects) <= 10 and set(connects) == {"127.0.0.1:%d" % receiver.port}
    assert len({r["connection"] for r in receiver.requests}) == len(connects)  # one connection per tunnel
    assert (state / "spool-ssh.jsonl").read_text() == ""
    assert elapsed < 60, elapsed
