"""A real HTTP CONNECT proxy on loopback: Debian's tinyproxy (tinyproxy-bin: the program without its service),
installed with apt when missing (as root; elsewhere the tests skip, and fail in CI).

Each proxy runs in the foreground on a free 127.0.0.1 port with its own config, logging every request line
(LogLevel Connect) to a file the tests read: connects() lists the HOST:PORT of each CONNECT it was asked for.
"""
import re
import socket
import subprocess
import time

import pytest

from conftest import installed

PACKAGE = "tinyproxy-bin"
# tinyproxy's BasicAuth takes [-a-z0-9._]+ only: "-" is sent percent-encoded (%2D) to check that it is decoded.
USER, PASSWORD = "afm", "proxy-pw.7"
CONNECT_LINE = re.compile(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP/")


def free_port():
    """A loopback port nothing listens on (for a moment)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def tinyproxy_program():
    return installed("tinyproxy", PACKAGE)


def wait_listening(port, process, seconds=10):
    """Whether PROCESS listens on 127.0.0.1:PORT within SECONDS (False once it has exited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Tinyproxy:
    def __init__(self, program, directory, connect_ports=None, basic_auth=None):
        self.log = directory / "tinyproxy.log"
        for _ in range(5):  # the free port may be taken between the probe and tinyproxy's bind
            self.port = free_port()
            config = directory / "tinyproxy.conf"
            lines = ["Port %d" % self.port, "Listen 127.0.0.1", "Timeout 60", 'LogFile "%s"' % self.log,
                     "LogLevel Connect", "MaxClients 100", "Allow 127.0.0.1"]
            # ConnectPort lines restrict CONNECT to those ports (none: every port); BasicAuth requires credentials.
            lines += ["ConnectPort %d" % port for port in connect_ports or ()]
            if basic_auth:
                lines.append("BasicAuth %s %s" % basic_auth)
            config.write_text("\n".join(lines) + "\n")
            if self.log.exists():
                self.log.unlink()
            self.output = open(directory / "tinyproxy.out", "w")
            self.process = subprocess.Popen([program, "-d", "-c", str(config)], stdin=subprocess.DEVNULL,
                                            stdout=self.output, stderr=subprocess.STDOUT)
            if wait_listening(self.port, self.process):
                break
            self.close()
        else:
            pytest.fail("tinyproxy did not start: %s" % (directory / "tinyproxy.out").read_text())
        self.url = "http://127.0.0.1:%d" % self.port

    def url_with(self, user, password):
        return "http://%s:%s@127.0.0.1:%d" % (user, password, self.port)

    def connects(self):
        """HOST:PORT of each CONNECT the proxy was asked for, in order."""
        text = self.log.read_text() if self.log.exists() else ""
        return CONNECT_LINE.findall(text)

    def close(self):
        stop(self.process)
        self.output.close()


@pytest.fixture
def start_tinyproxy(tinyproxy_program, tmp_path_factory):
    """start_tinyproxy(connect_ports=None, basic_auth=None) -> a running Tinyproxy, stopped after the test."""
    proxies = []

    def start(**options):
        proxies.append(Tinyproxy(tinyproxy_program, tmp_path_factory.mktemp("tinyproxy"), **options))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def tinyproxy(start_tinyproxy):
    """A running tinyproxy that CONNECTs to any port without credentials."""
    return start_tinyproxy()


@pytest.fixture(scope="session")
def stunnel_program():
    return installed("stunnel4", "stunnel4")


class TlsFront:
    """stunnel in front of a proxy: the same proxy as https://, its certificate CERT (a trustme LeafCert)."""

    def __init__(self, program, directory, behind, cert):
        pem = directory / "proxy.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        for _ in range(5):  # the free port may be taken between the probe and stunnel's bind
            self.port = free_port()
            config = directory / "stunnel.conf"
            config.write_text("foreground = yes\npid =\noutput = %s\n[proxy]\naccept = 127.0.0.1:%d\n"
                              "connect = 127.0.0.1:%d\ncert = %s\n" % (directory / "stunnel.log", self.port,
                                                                       behind.port, pem))
            self.process = subprocess.Popen([program, str(config)], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if wait_listening(self.port, self.process):
                break
            stop(self.process)
        else:
            pytest.fail("stunnel did not start: %s" % (directory / "stunnel.log").read_text())
        self.url = "https://127.0.0.1:%d" % self.port


@pytest.fixture
def start_https_proxy(stunnel_program, tinyproxy, tmp_path_factory):
    """start_https_proxy(cert) -> the tinyproxy fixture's proxy behind TLS with that certificate, stopped after
    the test (its CONNECTs are tinyproxy.connects())."""
    fronts = []

    def start(cert):
        fronts.append(TlsFront(stunnel_program, tmp_path_factory.mktemp("stunnel"), tinyproxy, cert))
        return fronts[-1]

    yield start
    for front in fronts:
        stop(front.process)
