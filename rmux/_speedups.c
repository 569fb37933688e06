/*
 * rmux._speedups: the request scan of rmux.resp.RequestParser in C.
 *
 * Optional: setup.py builds it when it can, and rmux.resp falls back to
 * hiredis and its pure-Python parser when it is missing.  It only ever
 * accepts what the pure-Python parser would accept in the same way, and
 * leaves everything else (inline commands, odd encodings, limits, errors,
 * incomplete commands) to that parser, which has the last word.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

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


static PyMethodDef methods[] = {
    {"scanRequests", (PyCFunction)(void (*)(void))scanRequests, METH_FASTCALL,
     scanRequests_doc},
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
