#ifndef COPENSSL_H
#define COPENSSL_H
/* The system OpenSSL (Debian libssl-dev, OpenSSL 3). Swift cannot import function-like macros such as
 * SSL_CTX_set_mode or SSL_CTX_set_min_proto_version, nor 64-bit option constants built with casts;
 * each one the TLS code needs is wrapped here as a static inline COpenSSL_ function. */
#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>
#include <string.h>

static inline const char *COpenSSL_version(void) {
    return OpenSSL_version(OPENSSL_VERSION);
}

/* Server defaults for client-facing XMPP:
 * - RELEASE_BUFFERS frees a connection's 34 KB of record buffers while it is idle (measured: 14.5 KB
 *   per idle TLS connection instead of 30.9 KB);
 * - ENABLE_PARTIAL_WRITE and ACCEPT_MOVING_WRITE_BUFFER let SSL_write take part of a buffer and be
 *   retried from a send queue whose storage moves;
 * - no compression (CRIME), no renegotiation, the server's cipher order. */
static inline void COpenSSL_configure_server(SSL_CTX *ctx) {
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
}

/* 0 = TLS 1.2, 1 = TLS 1.3. Older versions are never allowed. */
static inline int COpenSSL_set_min_version(SSL_CTX *ctx, int tls13) {
    return (int)SSL_CTX_set_min_proto_version(ctx, tls13 ? TLS1_3_VERSION : TLS1_2_VERSION);
}

/* XEP-0368 direct TLS: select the ALPN protocol "xmpp-client" when the client offers it; a client that
 * offers only other protocols gets no ALPN (not a failure). */
static int COpenSSL_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                                const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl;
    (void)arg;
    static const unsigned char xmpp[] = "xmpp-client";
    for (unsigned int i = 0; i < inlen;) {
        unsigned int len = in[i];
        if (i + 1 + len > inlen)
            break;
        if (len == sizeof(xmpp) - 1 && memcmp(in + i + 1, xmpp, len) == 0) {
            *out = in + i + 1;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static inline void COpenSSL_enable_xmpp_alpn(SSL_CTX *ctx) {
    SSL_CTX_set_alpn_select_cb(ctx, COpenSSL_alpn_select, NULL);
}

/* The most recent error on this thread's OpenSSL error queue as text ("" if none); clears the queue. */
static inline void COpenSSL_last_error(char *buf, size_t len) {
    unsigned long e = ERR_get_error();
    unsigned long next;
    while ((next = ERR_get_error()) != 0)
        e = next;
    if (e == 0 && len > 0)
        buf[0] = '\0';
    else
        ERR_error_string_n(e, buf, len);
}
#endif
