/* Base64 (RFC 4648, standard alphabet, padded): etcd's JSON gateway and
 * Consul's KV API carry keys and values this way. */
#ifndef LEADERSHIP_BASE64_H
#define LEADERSHIP_BASE64_H

#include <stddef.h>

/* A NUL-terminated encoding of data (malloc'd). */
char *ls_base64_encode(const void *data, size_t len);

/* The decoded bytes (malloc'd, NUL-terminated for convenience) and their
 * count in *outlen, or NULL if text is not valid base64. */
char *ls_base64_decode(const char *text, size_t len, size_t *outlen);

#endif
