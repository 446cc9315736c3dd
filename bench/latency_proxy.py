"""A TCP proxy on 127.0.0.1 that adds a round-trip time, standing in for the WAN to the endpoint.

This kernel has no netem qdisc, so the delay is made here: each byte waits half the RTT in each direction,
and a new connection's first bytes wait one extra RTT, as a TCP handshake would make them. TLS passes
through untouched, so a new connection pays its handshake round trips like on a real network.
"""
import asyncio
import threading


class LatencyProxy:
    def __init__(self, upstream_port, rtt_seconds):
        self.upstream_port, self.rtt = upstream_port, rtt_seconds
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait()

    def _serve(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _connection(self, client_reader, client_writer):
        handshake_done = self.loop.time() + self.rtt
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        await asyncio.gather(self._pipe(client_reader, upstream_writer, handshake_done),
                             self._pipe(upstream_reader, client_writer, 0.0), return_exceptions=True)

    async def _pipe(self, reader, writer, not_before):
        queue = asyncio.Queue()

        async def receive():
            while True:
                data = await reader.read(65536)
                await queue.put((max(self.loop.time() + self.rtt / 2, not_before), data))
                if not data:
                    return

        async def forward():
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(receive(), forward())

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
