/* cm_utf8.c - strict UTF-8 validation (RFC 3629) and JSON string escaping. */
#include <string.h>

#include "cm_base.h"

bool cm_utf8_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false; /* continuation byte, overlong lead C0/C1, or > F4 */
        }
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

size_t cm_utf8_trim(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    /* Back over at most 3 continuation bytes to the lead byte of the last
     * character; drop it when the bytes after it are fewer than it needs. */
    size_t i = len, back = 0;
    while (i > 0 && back < 3 && (p[i - 1] & 0xC0) == 0x80) i--, back++;
    if (i == 0) return len;
    unsigned char c = p[i - 1];
    size_t need = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : c >= 0xC0 ? 1 : 0;
    return need > back ? i - 1 : len;
}

size_t cm_json_escape(char *dst, size_t cap, const char *src, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)src[i];
        char esc[8];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = (char)c;
        } else if (c < 0x20) {
            static const char named[] = "btn\0fr"; /* \b=8 \t=9 \n=10 \f=12 \r=13 */
            esc[k++] = '\\';
            if (c >= 8 && c <= 13 && c != 11) {
                esc[k++] = named[c - 8];
            } else {
                static const char hex[] = "0123456789abcdef";
                memcpy(esc + k, "u00", 3);
                k += 3;
                esc[k++] = hex[c >> 4];
                esc[k++] = hex[c & 15];
            }
        } else {
            esc[k++] = (char)c;
        }
        if (dst) {
            if (n + k >= cap) break;
            memcpy(dst + n, esc, k);
        }
        n += k;
    }
    if (dst && cap) dst[n] = '\0';
    return n;
}

char *cm_json_quote(const char *src, size_t len) {
    size_t need = cm_json_escape(NULL, 0, src, len);
    char *q = cm_malloc(need + 3);
    if (!q) return NULL;
    q[0] = '"';
    cm_json_escape(q + 1, need + 1, src, len);
    memcpy(q + 1 + need, "\"", 2);
    return q;
}
