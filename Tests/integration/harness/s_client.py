"""`openssl s_client` (direct TLS or -starttls xmpp), run and picked apart."""
from __future__ import annotations

import subprocess
from pathlib import Path

from .env import XMPP_HOST
from .pki import cert_serial


class SClient:
    """What `openssl s_client` printed, picked apart."""

    def __init__(self, args: list[str], proc: subprocess.CompletedProcess):
        self.args = args
        self.returncode = proc.returncode
        self.stdout = proc.stdout.decode("utf-8", "replace")
        self.stderr = proc.stderr.decode("utf-8", "replace")
        self.output = self.stdout + self.stderr

    def _line(self, prefix: str) -> str | None:
        for line in self.output.splitlines():
            line = line.strip()
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        return None

    @property
    def verify_code(self) -> int | None:
        """`Verify return code: N (...)` -> N (the last one printed)."""
        codes = [line.split(":", 1)[1].split()[0] for line in self.output.splitlines()
                 if line.strip().startswith("Verify return code:")]
        return int(codes[-1]) if codes else None

    def _new_line(self) -> tuple[str, str] | None:
        """("TLSv1.3", "TLS_AES_256_GCM_SHA384") from `New, TLSv1.3, Cipher is ...`; None if the
        handshake did not complete (`New, (NONE), Cipher is (NONE)`, or no such line). The
        `Protocol  :` and `Verify return code:` lines of the session block are printed even for a
        failed handshake, so they prove nothing alone."""
        for line in self.output.splitlines():
            if line.startswith("New, ") and "Cipher is" in line:
                proto = line.split(",")[1].strip()
                cipher = line.split("Cipher is", 1)[1].strip()
                if proto == "(NONE)" or cipher == "(NONE)":
                    return None
                return proto, cipher
        return None

    @property
    def protocol(self) -> str | None:
        """The negotiated protocol (TLSv1.2, TLSv1.3), or None when no session was established."""
        n = self._new_line()
        return n[0] if n else None

    @property
    def cipher(self) -> str | None:
        n = self._new_line()
        return n[1] if n else None

    @property
    def alpn(self) -> str | None:
        """`ALPN protocol: X` -> X; None for `No ALPN negotiated` or nothing printed."""
        return self._line("ALPN protocol:")

    @property
    def handshake_ok(self) -> bool:
        return self._new_line() is not None

    @property
    def chain_pems(self) -> list[str]:
        """The certificates the server sent (with -showcerts: all of them), PEM, leaf first."""
        out, cur = [], None
        for line in self.stdout.splitlines():
            if line.startswith("-----BEGIN CERTIFICATE-----"):
                cur = [line]
            elif cur is not None:
                cur.append(line)
                if line.startswith("-----END CERTIFICATE-----"):
                    out.append("\n".join(cur) + "\n")
                    cur = None
        return out

    @property
    def leaf_serial(self) -> int | None:
        pems = self.chain_pems
        return cert_serial(pems[0]) if pems else None

    @property
    def chain_subjects(self) -> list[str]:
        """` 0 s:CN = localhost` lines of the `Certificate chain` section, in order."""
        return [line.split("s:", 1)[1].strip() for line in self.stdout.splitlines()
                if line.lstrip()[:1].isdigit() and " s:" in line]

    def __str__(self) -> str:
        return f"$ openssl {' '.join(self.args)}\n(exit {self.returncode})\n{self.output}"


def s_client(port: int, *args: str, host: str = "127.0.0.1", ca: Path | None = None,
             starttls: bool = False, timeout: float = 15, stdin: bytes = b"") -> SClient:
    """Runs `openssl s_client -connect host:port [-CAfile ca] [-starttls xmpp -xmpphost localhost]
    -servername localhost -showcerts ARGS` with stdin (default: nothing, so it closes right after
    the handshake). Never raises for a failed handshake: look at the result."""
    argv = ["s_client", "-connect", f"{host}:{port}", "-servername", XMPP_HOST, "-showcerts"]
    if ca is not None:
        argv += ["-CAfile", str(ca)]
    if starttls:
        argv += ["-starttls", "xmpp", "-xmpphost", XMPP_HOST]
    argv += list(args)
    try:
        proc = subprocess.run(["openssl", *argv], input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(e.cmd, -1, e.stdout or b"", (e.stderr or b"") +
                                           f"\n<s_client timed out after {timeout}s>".encode())
    return SClient(argv, proc)
