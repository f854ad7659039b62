"""The HTTPS listeners' TLS policy: TLS 1.2 and 1.3 only, and on TLS 1.2 only suites with an
ephemeral key exchange (ECDHE: a stolen certificate key does not decrypt recorded traffic) and
an AEAD cipher (AES-GCM, ChaCha20-Poly1305; no CBC with SHA-1). TLS 1.3's suites are all of that
kind. No compression, no renegotiation. The interpreter's defaults are not used: with an RSA
certificate they also offer static-RSA and CBC suites.

The settings' `tls_ciphers` (gunicorn's `ciphers`) replaces the TLS 1.2 list when an operator
must; the settings refuse a list OpenSSL matches nothing with."""
from __future__ import annotations

import ssl

POLICY = "ECDHE+AESGCM:ECDHE+CHACHA20"


def context(certfile: str, keyfile: str | None, ciphers: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
                    | ssl.OP_SINGLE_ECDH_USE)
    ctx.set_ciphers(ciphers or POLICY)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx
