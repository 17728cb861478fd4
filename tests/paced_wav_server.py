"""An endless WAV over HTTP at real-time pace, on loopback: an Icecast stand-in for url sources.

Stdlib and soundfile only (e2e_helpers is stdlib), so that it also runs by itself where pytest
is not installed (the booted-container test serves its stream with it):

    python tests/paced_wav_server.py [PORT]    # serves streamclf's bundled clip until killed
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from e2e_helpers import CLIP, free_tcp_port


class PacedWavServer:
    """An endless WAV over HTTP at real-time pace (an Icecast stand-in): the clip's PCM looped,
    behind a header that claims an unbounded length. ``start()``/``stop()`` may be repeated on
    the same port, so a stream can be unreachable first and come up later."""

    CHUNK_S = 0.1

    def __init__(self, path: Path = CLIP, port: int | None = None) -> None:
        import soundfile as sf

        audio, self.rate_hz = sf.read(path, dtype="int16", always_2d=True)
        self.channels = audio.shape[1]
        self._pcm = audio.tobytes()
        self.port = port or free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}/stream.wav"
        self.connections = 0
        self._server = None

    def _header(self) -> bytes:
        import struct

        block = 2 * self.channels
        return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, self.channels, self.rate_hz,
                              self.rate_hz * block, block, 16)
                + b"data" + struct.pack("<I", 0xFFFFFFFF))  # fmt: skip

    def start(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.end_headers()
                step = int(owner.rate_hz * owner.CHUNK_S) * 2 * owner.channels
                started, sent = time.monotonic(), 0
                try:
                    self.wfile.write(owner._header())
                    while owner._server is not None:
                        at = sent % len(owner._pcm)
                        self.wfile.write(owner._pcm[at : at + step])
                        sent += min(step, len(owner._pcm) - at)
                        ahead_s = sent / (owner.rate_hz * 2 * owner.channels) - (
                            time.monotonic() - started)
                        time.sleep(max(0.0, ahead_s - 1.0))  # keep one second buffered ahead
                except OSError:  # the reader went away (ffmpeg killed or restarted)
                    return

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    served = PacedWavServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else None)
    served.start()
    print(served.url, flush=True)
    threading.Event().wait()
