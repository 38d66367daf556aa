#ifndef COPENSSL_H
#define COPENSSL_H
/* The system OpenSSL (Debian libssl-dev, OpenSSL 3). Swift cannot import function-like macros such as
 * SSL_CTX_set_mode or SSL_set_tlsext_host_name; wrap each one the TLS code needs here as a
 * static inline COpenSSL_ function. */
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/opensslv.h>

/* SSL_CTX_set_mode is a macro over SSL_CTX_ctrl. RELEASE_BUFFERS frees the 34 KB of read/write buffers
 * of an idle connection (measured: 14.5 KB per idle TLS connection instead of 30.9 KB). */
static inline long COpenSSL_SSL_CTX_set_release_buffers(SSL_CTX *ctx) {
    return SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

static inline const char *COpenSSL_version(void) {
    return OpenSSL_version(OPENSSL_VERSION);
}
#endif
