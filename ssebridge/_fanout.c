/* ssebridge._fanout: the fan-out loop of ssebridge.fanout in C (optional; the pure-Python loop there is
 * the fallback and the reference). One shared frame, many clients: for each target that has a direct
 * socket, one send(2) of the shared bytes, with no Python call in between; the rest (targets without a
 * direct socket, or whose kernel buffer took less than all of it) go to their own Python methods.
 *
 * Why C: in Python the loop costs ~1.5-2.5 us per client on top of the kernel's send (attribute reads,
 * a bound-method call, exception handling); here ~70 ns a client for the whole call, sends aside: a
 * stream's slots are read at their offsets and a socket's fd from the socket object, with no lookup,
 * call or allocation per client before the sends (every client waits for that part).
 *
 * What a target is (see ssebridge.fanout): an object with `direct` (a socket, or None while it cannot
 * take a direct send), `chunked` (whether its bytes are framed as HTTP/1.1 chunks), the counters
 * `frames` and `bytes`, and the methods `send(data, count)` and `send_short(payload, sent)`.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static PyObject *s_direct, *s_chunked, *s_frames, *s_bytes, *s_send, *s_send_short;

/* Where a class keeps the four attributes the loop reads and writes, when they are __slots__ (as on
 * ssebridge.http.stream.Stream): their offsets in the object, read and written as the slots' own
 * descriptors do, without the attribute lookup per target (a per-call cache, one lookup per class).
 * NO_SLOT: an attribute of any other kind, which goes through PyObject_GetAttr/SetAttr as before. */
#define NO_SLOT (-1)

typedef struct {
    PyTypeObject *type; /* NULL: nothing cached yet; valid for one call (its targets keep it alive) */
    Py_ssize_t direct, chunked, frames, bytes;
} Layout;

/* The offset of `name` in instances of `type`, if it is a writable object slot (T_OBJECT_EX). */
static Py_ssize_t
slot_offset(PyTypeObject *type, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, name);
    if (descr == NULL) {
        PyErr_Clear();
        return NO_SLOT;
    }
    Py_ssize_t offset = NO_SLOT;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
            offset = member->offset;
    }
    Py_DECREF(descr);
    return offset;
}

static const Layout *
layout_of(PyObject *obj, Layout *cache)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (cache->type != type) {
        cache->type = type;
        cache->direct = slot_offset(type, s_direct);
        cache->chunked = slot_offset(type, s_chunked);
        cache->frames = slot_offset(type, s_frames);
        cache->bytes = slot_offset(type, s_bytes);
    }
    return cache;
}

/* A new reference to obj.name (at `offset` when it is a slot), or NULL with an exception set. */
static PyObject *
get(PyObject *obj, PyObject *name, Py_ssize_t offset)
{
    if (offset != NO_SLOT) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL)
            return Py_NewRef(value);
        /* Unset: the descriptor raises the AttributeError it always does. */
    }
    return PyObject_GetAttr(obj, name);
}

/* obj.name += inc */
static int
add_to(PyObject *obj, PyObject *name, Py_ssize_t offset, PyObject *inc)
{
    PyObject *value = get(obj, name, offset);
    if (value == NULL)
        return -1;
    PyObject *sum = PyNumber_Add(value, inc);
    Py_DECREF(value);
    if (sum == NULL)
        return -1;
    if (offset != NO_SLOT) {
        Py_XSETREF(*(PyObject **)((char *)obj + offset), sum);
        return 0;
    }
    int r = PyObject_SetAttr(obj, name, sum);
    Py_DECREF(sum);
    return r;
}

/* The fd of a socket object: read from the object, as socket.fileno() does but without the method
 * call and the int it allocates per target, when its type is one checked at import (below); else
 * PyObject_AsFileDescriptor. -1 for a closed socket. */
typedef struct {
    PyObject_HEAD
    int sock_fd; /* SOCKET_T on POSIX: the first field of CPython's PySocketSockObject */
} SocketHead;

/* Exactly _socket.socket and socket.socket (which keeps its base's fileno); NULL when the check at
 * import failed: every socket then goes through PyObject_AsFileDescriptor. A subclass of either might
 * answer fileno() its own way, so it does too. */
static PyTypeObject *socket_types[2];

static int
fd_of(PyObject *sock)
{
    PyTypeObject *type = Py_TYPE(sock);
    if (type != NULL && (type == socket_types[0] || type == socket_types[1]))
        return ((SocketHead *)sock)->sock_fd;
    return PyObject_AsFileDescriptor(sock);
}

/* The type `name` of `module`, if the direct read gives what its fileno() gives, on a socket of that
 * type made here, open and then closed; else NULL. */
static PyTypeObject *
checked_socket_type(const char *module_name, const char *name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    PyObject *type = module ? PyObject_GetAttrString(module, name) : NULL;
    Py_XDECREF(module);
    if (type == NULL || !PyType_Check(type) ||
        ((PyTypeObject *)type)->tp_basicsize < (Py_ssize_t)sizeof(SocketHead)) {
        PyErr_Clear();
        Py_XDECREF(type);
        return NULL;
    }
    PyObject *sock = PyObject_CallNoArgs(type);
    int ok = 0;
    if (sock != NULL) {
        int fd = PyObject_AsFileDescriptor(sock);
        ok = fd >= 0 && ((SocketHead *)sock)->sock_fd == fd;
        PyObject *r = PyObject_CallMethod(sock, "close", NULL);
        ok = ok && r != NULL && ((SocketHead *)sock)->sock_fd == -1 && PyObject_AsFileDescriptor(sock) == -1;
        Py_XDECREF(r);
        Py_DECREF(sock);
    }
    PyErr_Clear();
    if (!ok) {
        Py_DECREF(type);
        return NULL;
    }
    return (PyTypeObject *)type;
}

/* data as one HTTP/1.1 chunk: "<hex size>\r\n" data "\r\n" */
static PyObject *
chunk_of(const char *buf, Py_ssize_t size)
{
    char head[32];
    int h = snprintf(head, sizeof head, "%zx\r\n", (size_t)size);
    PyObject *out = PyBytes_FromStringAndSize(NULL, h + size + 2);
    if (out == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(out);
    memcpy(p, head, h);
    memcpy(p + h, buf, size);
    memcpy(p + h + size, "\r\n", 2);
    return out;
}

PyDoc_STRVAR(deliver_doc,
"deliver(data, count, targets)\n--\n\n"
"Send the shared frame `data` (holding `count` events) to every target; see ssebridge.fanout.");

/* One direct send to make: the target's index in the call's tuple, its fd, which payload. */
typedef struct {
    Py_ssize_t index;
    int fd;
    int chunked;
} Direct;

/* What step 3 does for one target: OWN its own send(data, count); COUNTED only its counters (its
 * direct send went out whole, or its peer is gone); >= 0 its counters and send_short of the rest, the
 * kernel having taken that many bytes. */
#define OWN (-2)
#define COUNTED (-1)

typedef struct {
    Py_ssize_t rest;
    int chunked;
} Outcome;

static int
fd_order(const void *a, const void *b)
{
    int x = ((const Direct *)a)->fd, y = ((const Direct *)b)->fd;
    return (x > y) - (x < y);
}

/* Put the sends in the order of their fds. Why: the kernel hands out the lowest free fd, so fd order
 * is about the order the connections were accepted in, which is the order their kernel state (and the
 * client's) was allocated in; sweeping them in that order, rather than in the order of a Python set
 * (by object address), measured 9% faster per send at 10,000 clients (bench/RESULTS.md). A table
 * indexed by fd does it in linear time; qsort when the fds are too sparse for one, or repeat. */
static void
order_by_fd(Direct *direct, Py_ssize_t n)
{
    if (n < 2)
        return;
    int top = 0;
    for (Py_ssize_t k = 0; k < n; k++)
        if (direct[k].fd > top)
            top = direct[k].fd;
    Py_ssize_t *slot = NULL; /* by fd: 1 + the index in `direct` of its send, 0 for none */
    Direct *sorted = NULL;
    if ((size_t)top <= 8 * (size_t)n + 4096) {
        slot = PyMem_Calloc((size_t)top + 1, sizeof(Py_ssize_t));
        sorted = PyMem_Malloc(sizeof(Direct) * (size_t)n);
    }
    if (slot == NULL || sorted == NULL)
        goto by_qsort;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (slot[direct[k].fd] != 0)
            goto by_qsort; /* two targets on one fd: not a stream's, but still sent to */
        slot[direct[k].fd] = k + 1;
    }
    Py_ssize_t m = 0;
    for (int fd = 0; fd <= top; fd++)
        if (slot[fd] != 0)
            sorted[m++] = direct[slot[fd] - 1];
    memcpy(direct, sorted, sizeof(Direct) * (size_t)n);
    PyMem_Free(slot);
    PyMem_Free(sorted);
    return;
by_qsort:
    PyMem_Free(slot);
    PyMem_Free(sorted);
    qsort(direct, (size_t)n, sizeof(Direct), fd_order);
}

/* Step 3 for a target that had a direct send: its counters, then, when the kernel took only `taken`
 * bytes of `payload`, its send_short(payload, taken). A new reference to None, or NULL on an error. */
static PyObject *
finish_direct(PyObject *target, const Layout *layout, PyObject *count, PyObject *size, PyObject *payload,
              Py_ssize_t taken)
{
    if (add_to(target, s_frames, layout->frames, count) < 0 || add_to(target, s_bytes, layout->bytes, size) < 0)
        return NULL;
    if (payload == NULL)
        return Py_NewRef(Py_None);
    PyObject *sent = PyLong_FromSsize_t(taken);
    if (sent == NULL)
        return NULL;
    PyObject *call[3] = {target, payload, sent};
    PyObject *r = PyObject_VectorcallMethod(s_send_short, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(sent);
    return r;
}

static PyObject *
deliver(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "deliver(data, count, targets) takes 3 arguments");
        return NULL;
    }
    PyObject *data = args[0], *count = args[1];
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    if (!PyLong_Check(count)) {
        PyErr_SetString(PyExc_TypeError, "count must be an int");
        return NULL;
    }
    /* A tuple of its own: a target's Python method may change the set the targets came from. */
    PyObject *targets = PySequence_Tuple(args[2]);
    if (targets == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(targets);
    PyObject *size = PyLong_FromSsize_t(PyBytes_GET_SIZE(data));
    Direct *direct = PyMem_Malloc(sizeof(Direct) * (size_t)(n ? n : 1));
    Outcome *outcome = PyMem_Malloc(sizeof(Outcome) * (size_t)(n ? n : 1));
    PyObject *chunk = NULL; /* built once, at the first chunked target */
    PyObject *result = NULL;
    Py_ssize_t ndirect = 0;
    if (size == NULL || direct == NULL || outcome == NULL) {
        if (size != NULL)
            PyErr_NoMemory();
        goto done;
    }
    /* 1. Which targets take a direct send, and their fds: the least per target, since every client
     *    waits for this step (the counters wait for step 3). No Python code runs from here to the
     *    sends, so no socket can be closed (and its fd reused) in between. */
    Layout cache = {NULL, NO_SLOT, NO_SLOT, NO_SLOT, NO_SLOT};
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *target = PyTuple_GET_ITEM(targets, i);
        outcome[i] = (Outcome){OWN, 0};
        const Layout *layout = layout_of(target, &cache);
        PyObject *sock = get(target, s_direct, layout->direct);
        if (sock == NULL) {
            /* Not a direct-capable subscriber (a test's, say): its own send. */
            if (!PyErr_ExceptionMatches(PyExc_AttributeError))
                goto done;
            PyErr_Clear();
            continue;
        }
        if (sock == Py_None) {
            Py_DECREF(sock);
            continue;
        }
        int fd = fd_of(sock); /* -1 for a closed socket: reported as gone */
        Py_DECREF(sock);
        if (fd < 0)
            PyErr_Clear();
        PyObject *flag = get(target, s_chunked, layout->chunked);
        int chunked = flag == NULL ? -1 : flag == Py_True ? 1 : flag == Py_False ? 0 : PyObject_IsTrue(flag);
        Py_XDECREF(flag);
        if (chunked < 0)
            goto done;
        if (chunked && chunk == NULL) {
            chunk = chunk_of(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data));
            if (chunk == NULL)
                goto done;
        }
        outcome[i] = (Outcome){COUNTED, chunked};
        if (fd >= 0)
            direct[ndirect++] = (Direct){i, fd, chunked};
    }
    order_by_fd(direct, ndirect);
    /* 2. The sends: a flat loop over fds, nothing else between them. */
    for (Py_ssize_t k = 0; k < ndirect; k++) {
        PyObject *payload = direct[k].chunked ? chunk : data;
        const char *buf = PyBytes_AS_STRING(payload);
        Py_ssize_t len = PyBytes_GET_SIZE(payload);
        ssize_t sent;
        do {
            sent = send(direct[k].fd, buf, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (sent < 0 && errno == EINTR);
        if (sent == len)
            continue;
        if (sent < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                continue; /* the peer is gone: the reactor reports it (connectionLost) next turn */
            sent = 0;
        }
        outcome[direct[k].index].rest = sent;
    }
    /* 3. Per target, in the call's order: the counters of a direct send (counted however the bytes
     *    leave, as Stream.send counts them), then, in Python, what the kernel did not take, or the
     *    target's own send. */
    /*    A target whose call fails does not stop the others: their bytes are already partly on the
     *    wire, and a frame cut short and never completed would break their streams. The first error
     *    is raised once every target has been served. */
    PyObject *err_type = NULL, *err_value = NULL, *err_tb = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *target = PyTuple_GET_ITEM(targets, i);
        Outcome o = outcome[i];
        PyObject *r;
        if (o.rest == OWN) {
            PyObject *call[3] = {target, data, count};
            r = PyObject_VectorcallMethod(s_send, call, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        } else {
            r = finish_direct(target, layout_of(target, &cache), count, size,
                              o.rest == COUNTED ? NULL : o.chunked ? chunk : data, o.rest);
        }
        if (r != NULL) {
            Py_DECREF(r);
        } else if (err_type == NULL) {
            PyErr_Fetch(&err_type, &err_value, &err_tb);
        } else {
            PyErr_Clear();
        }
    }
    if (err_type != NULL) {
        PyErr_Restore(err_type, err_value, err_tb);
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(direct);
    PyMem_Free(outcome);
    Py_XDECREF(chunk);
    Py_XDECREF(size);
    Py_DECREF(targets);
    return result;
}

static PyMethodDef methods[] = {
    {"deliver", (PyCFunction)(void (*)(void))deliver, METH_FASTCALL, deliver_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "ssebridge._fanout",
    "The fan-out loop of ssebridge.fanout, in C (optional).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__fanout(void)
{
    if (!(s_direct = PyUnicode_InternFromString("direct")) ||
        !(s_chunked = PyUnicode_InternFromString("chunked")) ||
        !(s_frames = PyUnicode_InternFromString("frames")) ||
        !(s_bytes = PyUnicode_InternFromString("bytes")) ||
        !(s_send = PyUnicode_InternFromString("send")) ||
        !(s_send_short = PyUnicode_InternFromString("send_short")))
        return NULL;
    socket_types[0] = checked_socket_type("_socket", "socket");
    socket_types[1] = socket_types[0] ? checked_socket_type("socket", "socket") : NULL;
    return PyModule_Create(&module);
}
