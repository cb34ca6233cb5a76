/* cm_status.c - status code names and descriptions (from CM_STATUS_LIST). */
#include <errno.h>

#include "cm_base.h"

const char *cm_strerror(cm_status_t st) {
    switch (st) {
#define CM_STATUS_TEXT_(name, value, text) \
    case CM_##name:                        \
        return text;
        CM_STATUS_LIST(CM_STATUS_TEXT_)
#undef CM_STATUS_TEXT_
    }
    return st > 0 ? "operation in progress (unknown code)" : "unknown error";
}

const char *cm_status_name(cm_status_t st) {
    switch (st) {
#define CM_STATUS_NAME_(name, value, text) \
    case CM_##name:                        \
        return #name;
        CM_STATUS_LIST(CM_STATUS_NAME_)
#undef CM_STATUS_NAME_
    }
    return "UNKNOWN";
}

cm_status_t cm_status_from_errno(int err) {
    switch (err) {
    case 0:
        return CM_OK;
    case EINVAL:
        return CM_ERR_INVALID_ARG;
    case ENOMEM:
        return CM_ERR_NO_MEMORY;
    case ETIMEDOUT:
        return CM_ERR_TIMEOUT;
    case ENOENT:
        return CM_ERR_NOT_FOUND;
    case EEXIST:
        return CM_ERR_EXISTS;
    case EMSGSIZE:
    case EFBIG:
    case E2BIG:
        return CM_ERR_TOO_LARGE;
    case ERANGE:
        return CM_ERR_OUT_OF_RANGE;
    case ENOTSUP:
        return CM_ERR_UNSUPPORTED;
    case ECANCELED:
        return CM_ERR_CANCELED;
    case ECONNREFUSED:
    case ECONNRESET:
    case EHOSTUNREACH:
    case EPIPE:
        return CM_ERR_PEER_DEAD;
    case EAGAIN:
    case EBUSY:
        return CM_ERR_BUSY;
    case ENODEV:
        return CM_ERR_NO_DEVICE;
    default:
        return CM_ERR_IO;
    }
}
