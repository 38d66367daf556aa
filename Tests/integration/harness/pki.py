"""A test PKI, made with the openssl command line: root CA -> intermediate CA -> server certs."""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

from .env import XMPP_HOST
from .errors import HarnessError
from .files import write_private_file

_CA_EXTENSIONS = """\
[ req ]
distinguished_name = dn
prompt = no
[ dn ]
[ root_ca ]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ intermediate_ca ]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[ server ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = @server_names
[ server_names ]
DNS.1 = localhost
IP.1 = 127.0.0.1
"""


def _openssl(*args: str, cwd: Path, input: bytes | None = None) -> bytes:
    r = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise HarnessError(f"openssl {' '.join(args)} -> exit {r.returncode}\n"
                           f"{r.stderr.decode('utf-8', 'replace')}")
    return r.stdout


class ServerCert:
    """One server certificate for `localhost` (SAN DNS:localhost, IP:127.0.0.1), signed by the
    intermediate CA.

    bundle   the PEM a server loads (certfile): leaf, then intermediate, then the private key; mode 600
    cert     the leaf alone (PEM), key: the private key alone (mode 600)
    serial   the leaf's serial number (int), subject: its subject as openssl prints it
    """

    def __init__(self, name: str, bundle: Path, cert: Path, key: Path, serial: int, subject: str):
        self.name, self.bundle, self.cert, self.key = name, bundle, cert, key
        self.serial, self.subject = serial, subject

    def bundle_bytes(self) -> bytes:
        return self.bundle.read_bytes()

    def __repr__(self) -> str:
        return f"ServerCert({self.name}, serial={self.serial:#x}, {self.subject})"


class TestPKI:
    """A throwaway CA hierarchy in `dir`, made with the `openssl` command line:

      ca.pem            root CA (self-signed): what clients trust (-CAfile, ca_certs)
      intermediate.pem  intermediate CA, signed by the root (pathlen 0)
      <name>.pem        server bundles from issue(): leaf + intermediate + key, mode 600

    make_test_pki() also issues `server` and `server2` (different serials and subjects).
    Keys are RSA 2048. Everything is owned by the caller (root in the tests), keys mode 600.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, dir: Path):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.tag = secrets.token_hex(3)
        self.cnf = self.dir / "openssl.cnf"
        self.cnf.write_text(_CA_EXTENSIONS)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.intermediate = self.dir / "intermediate.pem"
        self.intermediate_key = self.dir / "intermediate.key"
        self.certs: dict[str, ServerCert] = {}
        self._used_serials: set[int] = set()
        self._make_cas()

    def _serial(self) -> int:
        while True:
            s = secrets.randbits(63) | (1 << 62)  # positive, 63 bits, never a repeat
            if s not in self._used_serials:
                self._used_serials.add(s)
                return s

    def _key(self, path: Path) -> None:
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", str(path), cwd=self.dir)
        os.chmod(path, 0o600)

    def _make_cas(self) -> None:
        d = self.dir
        self._key(self.ca_key)
        _openssl("req", "-x509", "-new", "-config", str(self.cnf), "-extensions", "root_ca",
                 "-key", str(self.ca_key), "-subj", f"/O=Megaphone tests/CN=Megaphone Test Root CA {self.tag}",
                 "-days", "30", "-sha256", "-set_serial", str(self._serial()), "-out", str(self.ca), cwd=d)
        self._key(self.intermediate_key)
        csr = d / "intermediate.csr"
        _openssl("req", "-new", "-config", str(self.cnf), "-key", str(self.intermediate_key),
                 "-subj", f"/O=Megaphone tests/CN=Megaphone Test Intermediate CA {self.tag}",
                 "-out", str(csr), cwd=d)
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                 "-set_serial", str(self._serial()), "-days", "30", "-sha256",
                 "-extfile", str(self.cnf), "-extensions", "intermediate_ca", "-out", str(self.intermediate),
                 cwd=d)
        for p in (self.ca, self.intermediate):
            os.chmod(p, 0o644)

    def issue(self, name: str, cn: str = XMPP_HOST) -> ServerCert:
        """A new server certificate for `localhost`, with a fresh serial and a subject that names it."""
        d = self.dir
        key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
        self._key(key)
        subject = f"/O=Megaphone tests/OU={name} {self.tag}/CN={cn}"
        _openssl("req", "-new", "-config", str(self.cnf), "-key", str(key), "-subj", subject,
                 "-out", str(csr), cwd=d)
        serial = self._serial()
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.intermediate),
                 "-CAkey", str(self.intermediate_key), "-set_serial", str(serial), "-days", "30",
                 "-sha256", "-extfile", str(self.cnf), "-extensions", "server", "-out", str(cert), cwd=d)
        os.chmod(cert, 0o644)
        bundle = d / f"{name}.pem"
        write_private_file(bundle, cert.read_bytes() + self.intermediate.read_bytes() + key.read_bytes())
        printed = _openssl("x509", "-in", str(cert), "-noout", "-subject", "-nameopt", "RFC2253",
                           cwd=d).decode().strip()
        c = ServerCert(name, bundle, cert, key, serial, printed.removeprefix("subject=").strip())
        self.certs[name] = c
        return c

    @property
    def server(self) -> ServerCert:
        return self.certs["server"]

    @property
    def server2(self) -> ServerCert:
        return self.certs["server2"]


def make_test_pki(dir: Path) -> TestPKI:
    """Root CA, intermediate CA, and two server certificates (`server`, `server2`) for localhost."""
    pki = TestPKI(dir)
    pki.issue("server")
    pki.issue("server2")
    return pki


def cert_serial(pem: bytes | str) -> int:
    """The serial number of the first certificate in pem."""
    if isinstance(pem, str):
        pem = pem.encode()
    out = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem, capture_output=True,
                         timeout=10)
    if out.returncode != 0:
        raise HarnessError(f"openssl x509 -serial: {out.stderr.decode('utf-8', 'replace')}")
    return int(out.stdout.decode().strip().split("=", 1)[1], 16)
