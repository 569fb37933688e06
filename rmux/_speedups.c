/*
 * rmux._speedups: the request scan of rmux.resp.RequestParser and the
 * reply scan of rmux.resp.ReplyFramer in C, and the receiving of big bulk
 * strings in place (no chunks to join).
 *
 * Optional: setup.py builds it when it can, and rmux.resp falls back to
 * hiredis and its pure-Python parser when it is missing.  It only ever
 * accepts what the pure-Python parser (or framer) would accept in the same
 * way, and leaves everything else (inline commands, odd encodings, limits,
 * errors, incomplete commands or replies) to it, which has the last word.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

/*
 * Read the canonical decimal at *p, which must end with CRLF before end:
 * digits only, no sign, no leading zero (but "0").  Returns the number and
 * moves *p past the CRLF, or returns -1 (not canonical, or not all here).
 */
static inline long long
readLength(const char **p, const char *end)
{
    const char *q = *p;
    long long value = 0;
    int digits = 0;

    if (q >= end) {
        return -1;
    }
    if (*q == '0') {
        q++;
    }
    else {
        while (q < end && *q >= '0' && *q <= '9') {
            if (++digits > 18) {
                return -1;
            }
            value = value * 10 + (*q - '0');
            q++;
        }
        if (!digits) {
            return -1;
        }
    }
    if (end - q < 2 || q[0] != '\r' || q[1] != '\n') {
        return -1;
    }
    *p = q + 2;
    return value;
}


PyDoc_STRVAR(scanRequests_doc,
"scanRequests(data, pos, out, maxArguments, maxBulkLength) -> int\n\
\n\
Append to the list out each complete command in the bytes data from pos\n\
that is a canonically encoded RESP array of bulk strings, within the\n\
limits, as a list of bytes.  Return where the scan stopped: len(data), or\n\
the start of the first thing it left for the pure-Python parser.");

static PyObject *
scanRequests(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *out, *argv, *item;
    Py_ssize_t pos, n, i;
    long long count, length, maxArgs, maxBulk;
    const char *buf, *end, *p;

    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scanRequests takes 5 arguments");
        return NULL;
    }
    data = args[0];
    out = args[2];
    if (!PyBytes_CheckExact(data) || !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError,
                        "scanRequests: data must be bytes, out a list");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    maxArgs = PyLong_AsLongLong(args[3]);
    maxBulk = PyLong_AsLongLong(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    n = PyBytes_GET_SIZE(data);
    if (pos < 0 || pos > n) {
        PyErr_SetString(PyExc_ValueError, "scanRequests: pos out of range");
        return NULL;
    }
    buf = PyBytes_AS_STRING(data);
    end = buf + n;

    while (pos < n) {
        p = buf + pos;
        if (*p != '*') {
            break;
        }
        p++;
        count = readLength(&p, end);
        if (count <= 0 || count > maxArgs) {
            break;
        }
        /* Every argument takes at least 6 bytes ("$0\r\n\r\n"): a count the
         * data cannot hold yet allocates nothing. */
        if (count > (end - p) / 6) {
            break;
        }
        argv = PyList_New((Py_ssize_t)count);
        if (argv == NULL) {
            return NULL;
        }
        for (i = 0; i < count; i++) {
            if (p >= end || *p != '$') {
                break;
            }
            p++;
            length = readLength(&p, end);
            if (length < 0 || length > maxBulk || end - p < length + 2
                    || p[length] != '\r' || p[length + 1] != '\n') {
                break;
            }
            item = PyBytes_FromStringAndSize(p, (Py_ssize_t)length);
            if (item == NULL) {
                Py_DECREF(argv);
                return NULL;
            }
            PyList_SET_ITEM(argv, i, item);
            p += length + 2;
        }
        if (i < count) {
            /* Unfilled items are NULL, which the list's deallocation
             * skips. */
            Py_DECREF(argv);
            break;
        }
        if (PyList_Append(out, argv) < 0) {
            Py_DECREF(argv);
            return NULL;
        }
        Py_DECREF(argv);
        pos = p - buf;
    }
    return PyLong_FromSsize_t(pos);
}


/*
 * A big bulk string is received straight into the bytes object it ends up
 * as, rather than into chunks joined at the end (a copy of every megabyte
 * value).  The object is new and held by one parser until it is complete;
 * nothing else sees it before, so writing into it is safe.
 */

PyDoc_STRVAR(newBody_doc,
"newBody(size) -> bytes\n\
\n\
A new bytes object of size bytes, not initialised: to be filled with\n\
fillBody and recvBody before anyone else sees it.");

static PyObject *
newBody(PyObject *module, PyObject *arg)
{
    Py_ssize_t size = PyLong_AsSsize_t(arg);

    if (size < 0) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_ValueError, "size must not be negative");
        }
        return NULL;
    }
    return PyBytes_FromStringAndSize(NULL, size);
}


/* The body and the offset of args[0] and args[1], checked to leave at
 * least room bytes from there. */
static char *
bodyAt(PyObject *const *args, Py_ssize_t *room)
{
    PyObject *body = args[0];
    Py_ssize_t offset;

    if (!PyBytes_CheckExact(body)) {
        PyErr_SetString(PyExc_TypeError, "body must be bytes");
        return NULL;
    }
    offset = PyLong_AsSsize_t(args[1]);
    if (offset == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (offset < 0 || offset > PyBytes_GET_SIZE(body)) {
        PyErr_SetString(PyExc_ValueError, "offset out of range");
        return NULL;
    }
    *room = PyBytes_GET_SIZE(body) - offset;
    return PyBytes_AS_STRING(body) + offset;
}


PyDoc_STRVAR(fillBody_doc,
"fillBody(body, offset, data, start) -> int\n\
\n\
Copy data[start:] into body at offset, as much as fits; return how many\n\
bytes were copied.");

static PyObject *
fillBody(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t room, start, size;
    char *target;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "fillBody takes 4 arguments");
        return NULL;
    }
    target = bodyAt(args, &room);
    if (target == NULL) {
        return NULL;
    }
    if (!PyBytes_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    start = PyLong_AsSsize_t(args[3]);
    if (start == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (start < 0 || start > PyBytes_GET_SIZE(args[2])) {
        PyErr_SetString(PyExc_ValueError, "start out of range");
        return NULL;
    }
    size = PyBytes_GET_SIZE(args[2]) - start;
    if (size > room) {
        size = room;
    }
    memcpy(target, PyBytes_AS_STRING(args[2]) + start, size);
    return PyLong_FromSsize_t(size);
}


PyDoc_STRVAR(recvBody_doc,
"recvBody(body, offset, fd) -> int\n\
\n\
Receive from the socket fd into body at offset, at most what is left of\n\
body; return how many bytes came (0: the peer closed).  Errors raise\n\
OSError, as socket.recv does.");

static PyObject *
recvBody(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t room, got;
    char *target;
    long fd;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "recvBody takes 3 arguments");
        return NULL;
    }
    target = bodyAt(args, &room);
    if (target == NULL) {
        return NULL;
    }
    fd = PyLong_AsLong(args[2]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    if (!room) {
        PyErr_SetString(PyExc_ValueError, "the body is full");
        return NULL;
    }
    for (;;) {
        got = recv((int)fd, target, (size_t)room, 0);
        if (got >= 0 || errno != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;  /* a signal handler raised */
        }
    }
    if (got < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromSsize_t(got);
}


/* Where the first CRLF at or after p ends before end starts, or NULL. */
static inline const char *
findCRLF(const char *p, const char *end)
{
    while (p < end) {
        const char *r = memchr(p, '\r', (size_t)(end - p));
        if (r == NULL || r + 1 >= end) {
            return NULL;
        }
        if (r[1] == '\n') {
            return r;
        }
        p = r + 1;
    }
    return NULL;
}

/* Whether p holds "-1" and CRLF before end (a RESP2 null). */
static inline int
isNull(const char *p, const char *end)
{
    return end - p >= 4 && p[0] == '-' && p[1] == '1' && p[2] == '\r' && p[3] == '\n';
}

#define MAX_DEPTH 64

/*
 * The end of the top-level reply at p, or NULL when it is incomplete or
 * holds anything this scan leaves to the pure-Python framer: attributes,
 * streamed strings and aggregates, lengths that are not canonical, a bulk
 * string not followed by CRLF, an unknown type, deeper nesting than
 * MAX_DEPTH.
 */
static const char *
replyEnd(const char *p, const char *end)
{
    long long left[MAX_DEPTH];
    int depth = 0;
    long long length;
    const char *q;
    char type;

    for (;;) {
        if (p >= end) {
            return NULL;
        }
        type = *p;
        q = p + 1;
        switch (type) {
        case '+': case '-': case ':': case '_': case ',': case '#': case '(':
            q = findCRLF(q, end);
            if (q == NULL) {
                return NULL;
            }
            p = q + 2;
            break;
        case '$': case '!': case '=':
            if (type == '$' && isNull(q, end)) {
                p = q + 4;
                break;
            }
            length = readLength(&q, end);
            if (length < 0 || (long long)(end - q) - 2 < length) {
                return NULL;
            }
            if (q[length] != '\r' || q[length + 1] != '\n') {
                return NULL;
            }
            p = q + length + 2;
            break;
        case '*': case '%': case '~': case '>':
            if (type == '*' && isNull(q, end)) {
                p = q + 4;
                break;
            }
            length = readLength(&q, end);
            if (length < 0) {
                return NULL;
            }
            p = q;
            if (length > 0) {
                if (depth == MAX_DEPTH) {
                    return NULL;
                }
                left[depth++] = type == '%' ? 2 * length : length;
                continue;
            }
            break;
        default:
            return NULL;
        }
        /* An item is complete: count it, and close what it completes. */
        while (depth > 0 && --left[depth - 1] == 0) {
            depth--;
        }
        if (depth == 0) {
            return p;
        }
    }
}


PyDoc_STRVAR(frameReplies_doc,
"frameReplies(data, pos, out) -> int\n\
\n\
Append to the list out each complete top-level reply in the bytes data\n\
from pos, as the exact bytes received (data itself when it is exactly one\n\
reply), for the RESP this scan knows: lines, bulk strings, arrays, maps,\n\
sets and pushes, with canonical lengths.  Return where it stopped:\n\
len(data), or the start of the first reply it left to the pure-Python\n\
framer (incomplete, or anything else).");

static PyObject *
frameReplies(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *data, *out, *item;
    Py_ssize_t pos;
    const char *buf, *end, *p, *e;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "frameReplies takes 3 arguments");
        return NULL;
    }
    data = args[0];
    out = args[2];
    if (!PyBytes_CheckExact(data) || !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError,
                        "frameReplies: data must be bytes, out a list");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (pos < 0 || pos > PyBytes_GET_SIZE(data)) {
        PyErr_SetString(PyExc_ValueError, "pos out of range");
        return NULL;
    }
    buf = PyBytes_AS_STRING(data);
    end = buf + PyBytes_GET_SIZE(data);
    p = buf + pos;
    while (p < end && (e = replyEnd(p, end)) != NULL) {
        if (p == buf && e == end) {
            item = data;
            Py_INCREF(item);
        }
        else {
            item = PyBytes_FromStringAndSize(p, e - p);
            if (item == NULL) {
                return NULL;
            }
        }
        if (PyList_Append(out, item) < 0) {
            Py_DECREF(item);
            return NULL;
        }
        Py_DECREF(item);
        p = e;
    }
    return PyLong_FromSsize_t(p - buf);
}


static PyMethodDef methods[] = {
    {"frameReplies", (PyCFunction)(void (*)(void))frameReplies, METH_FASTCALL,
     frameReplies_doc},
    {"scanRequests", (PyCFunction)(void (*)(void))scanRequests, METH_FASTCALL,
     scanRequests_doc},
    {"newBody", newBody, METH_O, newBody_doc},
    {"fillBody", (PyCFunction)(void (*)(void))fillBody, METH_FASTCALL, fillBody_doc},
    {"recvBody", (PyCFunction)(void (*)(void))recvBody, METH_FASTCALL, recvBody_doc},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "rmux._speedups",
    "C versions of rmux.resp's inner loops; optional.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}
