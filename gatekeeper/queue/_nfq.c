/* Batched reads and verdicts on an nfnetlink_queue socket.
 *
 * NetfilterQueue binds and configures the queue (it stays the library of record for
 * that); this module then serves the socket NetfilterQueue opened, a batch at a time:
 * one recvmmsg(2) takes up to `size` queued packets, and one send(2) carries all of
 * their verdicts. NetfilterQueue's own loop makes two system calls and a Packet object
 * per packet; here they are two system calls per batch and one bytes object per packet.
 *
 * Verdicts are fail-closed: a packet the caller gives no verdict for is dropped, and a
 * run of drops goes out as one NFQNL_MSG_VERDICT_BATCH ("drop every packet up to this
 * id"), which can only ever drop more, never accept. Accepts go one message each, by id.
 * Messages go out in order, so an accept is never covered by a later batch drop.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>

/* A queued packet's message: its payload (up to NetfilterQueue's copy range of 4016
 * bytes) and a few hundred bytes of attributes; twice that leaves room. */
#define MESSAGE_BYTES 8192
#define VERDICT_BYTES (NLMSG_LENGTH(sizeof(struct nfgenmsg)) + NLA_HDRLEN + \
                       NLA_ALIGN(sizeof(struct nfqnl_msg_verdict_hdr)))
#define MAX_SIZE 1024

typedef struct {
    PyObject_HEAD
    int fd;
    uint16_t queue;
    unsigned int size;       /* datagrams a read asks for */
    struct mmsghdr *msgs;
    struct iovec *iovs;
    char *buffers;
    uint32_t *ids;           /* packet ids of the last read, in order */
    Py_ssize_t count;        /* how many */
    Py_ssize_t capacity;     /* room in ids */
    char *out;               /* verdict messages: at most one a packet */
    Py_ssize_t out_room;     /* packets' worth of room in out */
    unsigned long long reads, sends, errors, enobufs, truncated;
} Batch;

static void
Batch_dealloc(Batch *self)
{
    PyMem_Free(self->msgs);
    PyMem_Free(self->iovs);
    PyMem_Free(self->buffers);
    PyMem_Free(self->ids);
    PyMem_Free(self->out);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Batch_init(Batch *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "queue", "size", NULL};
    int fd, queue;
    unsigned int size = 64;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "ii|I", kwlist, &fd, &queue, &size))
        return -1;
    if (fd < 0 || queue < 0 || queue > 65535) {
        PyErr_SetString(PyExc_ValueError, "fd must be >= 0 and queue within 0-65535");
        return -1;
    }
    if (size < 1 || size > MAX_SIZE) {
        PyErr_Format(PyExc_ValueError, "size must be within 1-%d", MAX_SIZE);
        return -1;
    }
    if (self->msgs != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Batch is already initialised");
        return -1;
    }
    self->fd = fd;
    self->queue = (uint16_t)queue;
    self->size = size;
    self->msgs = PyMem_Calloc(size, sizeof(struct mmsghdr));
    self->iovs = PyMem_Calloc(size, sizeof(struct iovec));
    self->buffers = PyMem_Malloc((size_t)size * MESSAGE_BYTES);
    self->capacity = size;
    self->ids = PyMem_Malloc(sizeof(uint32_t) * (size_t)self->capacity);
    self->out = NULL;
    self->out_room = 0;
    if (self->msgs == NULL || self->iovs == NULL || self->buffers == NULL || self->ids == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (unsigned int i = 0; i < size; i++) {
        self->iovs[i].iov_base = self->buffers + (size_t)i * MESSAGE_BYTES;
        self->iovs[i].iov_len = MESSAGE_BYTES;
        self->msgs[i].msg_hdr.msg_iov = &self->iovs[i];
        self->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return 0;
}

/* Keep a packet's id; returns -1 (MemoryError set) when there is no room. */
static int
keep_id(Batch *self, uint32_t id)
{
    if (self->count == self->capacity) {
        Py_ssize_t capacity = self->capacity * 2;
        uint32_t *ids = PyMem_Realloc(self->ids, sizeof(uint32_t) * (size_t)capacity);
        if (ids == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->ids = ids;
        self->capacity = capacity;
    }
    self->ids[self->count++] = id;
    return 0;
}

/* The packets of one datagram (normally one) onto `out`; -1 on a Python error. */
static int
take_datagram(Batch *self, const char *data, size_t len, PyObject *out)
{
    const struct nlmsghdr *nlh = (const struct nlmsghdr *)data;
    int left = (int)len;
    for (; NLMSG_OK(nlh, left); nlh = NLMSG_NEXT(nlh, left)) {
        if (nlh->nlmsg_type == NLMSG_ERROR) {
            self->errors++;  /* a verdict the kernel refused (its packet was gone) */
            continue;
        }
        if (nlh->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET))
            continue;
        if (nlh->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg)))
            continue;
        const char *attr = (const char *)NLMSG_DATA(nlh) + NLMSG_ALIGN(sizeof(struct nfgenmsg));
        const char *end = (const char *)nlh + nlh->nlmsg_len;
        const struct nfqnl_msg_packet_hdr *hdr = NULL;
        const char *payload = NULL;
        size_t payload_len = 0;
        while (attr + NLA_HDRLEN <= end) {
            const struct nlattr *nla = (const struct nlattr *)attr;
            if (nla->nla_len < NLA_HDRLEN || attr + nla->nla_len > end)
                break;
            int type = nla->nla_type & NLA_TYPE_MASK;
            size_t n = nla->nla_len - NLA_HDRLEN;
            if (type == NFQA_PACKET_HDR && n >= sizeof(struct nfqnl_msg_packet_hdr))
                hdr = (const struct nfqnl_msg_packet_hdr *)(attr + NLA_HDRLEN);
            else if (type == NFQA_PAYLOAD) {
                payload = attr + NLA_HDRLEN;
                payload_len = n;
            }
            attr += NLA_ALIGN(nla->nla_len);
        }
        if (hdr == NULL)
            continue;  /* no id: nothing can be verdicted; the kernel keeps it queued */
        PyObject *bytes = PyBytes_FromStringAndSize(payload, payload == NULL ? 0 : (Py_ssize_t)payload_len);
        if (bytes == NULL)
            return -1;
        if (PyList_Append(out, bytes) < 0) {
            Py_DECREF(bytes);
            return -1;
        }
        Py_DECREF(bytes);
        if (keep_id(self, ntohl(hdr->packet_id)) < 0)
            return -1;
    }
    return 0;
}

PyDoc_STRVAR(Batch_read_doc,
"read() -> list[bytes]\n\n"
"The payloads (IP packets) of the queued packets waiting on the socket, at most `size`\n"
"datagrams' worth, in queue order, without blocking: [] when none is waiting. Every\n"
"packet of a read must get its verdict with verdict() before the next read; any left\n"
"without one are dropped then.");

static PyObject *Batch_verdict_impl(Batch *self, const char *accepts, Py_ssize_t n);

static PyObject *
Batch_read(Batch *self, PyObject *Py_UNUSED(ignored))
{
    if (self->count > 0) {  /* the previous read's packets never got verdicts: drop them */
        PyObject *sent = Batch_verdict_impl(self, NULL, 0);
        if (sent == NULL)
            return NULL;
        Py_DECREF(sent);
    }
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (;;) {
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = recvmmsg(self->fd, self->msgs, self->size, MSG_DONTWAIT, NULL);
        Py_END_ALLOW_THREADS
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return out;
            if (errno == ENOBUFS) {  /* the kernel could not queue some packets to us */
                self->enobufs++;
                continue;
            }
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) {
                    Py_DECREF(out);
                    return NULL;
                }
                continue;
            }
            Py_DECREF(out);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        self->reads++;
        for (int i = 0; i < got; i++) {
            if (self->msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                self->truncated++;
            if (take_datagram(self, self->iovs[i].iov_base, self->msgs[i].msg_len, out) < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
        if (PyList_GET_SIZE(out) > 0 || got == 0)
            return out;
        /* only acks or errors came: read on */
    }
}

static char *
put_verdict(char *p, uint16_t msg, uint16_t queue, uint32_t verdict, uint32_t id)
{
    struct nlmsghdr *nlh = (struct nlmsghdr *)p;
    nlh->nlmsg_len = VERDICT_BYTES;
    nlh->nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | msg;
    nlh->nlmsg_flags = NLM_F_REQUEST;
    nlh->nlmsg_seq = 0;
    nlh->nlmsg_pid = 0;
    struct nfgenmsg *gen = NLMSG_DATA(nlh);
    gen->nfgen_family = AF_UNSPEC;
    gen->version = NFNETLINK_V0;
    gen->res_id = htons(queue);
    struct nlattr *nla = (struct nlattr *)((char *)gen + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
    nla->nla_len = NLA_HDRLEN + sizeof(struct nfqnl_msg_verdict_hdr);
    nla->nla_type = NFQA_VERDICT_HDR;
    struct nfqnl_msg_verdict_hdr *v = (struct nfqnl_msg_verdict_hdr *)((char *)nla + NLA_HDRLEN);
    v->verdict = htonl(verdict);
    v->id = htonl(id);
    return p + VERDICT_BYTES;
}

static PyObject *
Batch_verdict_impl(Batch *self, const char *accepts, Py_ssize_t n)
{
    Py_ssize_t count = self->count;
    if (count == 0)
        Py_RETURN_NONE;
    if (self->out_room < count) {  /* an accept, or a run of drops: one message a packet at most */
        PyMem_Free(self->out);
        self->out_room = 0;
        self->out = PyMem_Malloc((size_t)VERDICT_BYTES * (size_t)self->capacity);
        if (self->out == NULL)
            return PyErr_NoMemory();
        self->out_room = self->capacity;
    }
    char *p = self->out;
    Py_ssize_t pending = -1;  /* the last packet of a run of drops not yet sent */
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i < n && accepts[i]) {
            if (pending >= 0) {
                p = put_verdict(p, NFQNL_MSG_VERDICT_BATCH, self->queue, NF_DROP, self->ids[pending]);
                pending = -1;
            }
            p = put_verdict(p, NFQNL_MSG_VERDICT, self->queue, NF_ACCEPT, self->ids[i]);
        } else {
            pending = i;
        }
    }
    if (pending >= 0)
        p = put_verdict(p, NFQNL_MSG_VERDICT_BATCH, self->queue, NF_DROP, self->ids[pending]);
    self->count = 0;
    ssize_t sent;
    size_t len = (size_t)(p - self->out);
    do {
        Py_BEGIN_ALLOW_THREADS
        sent = send(self->fd, self->out, len, 0);
        Py_END_ALLOW_THREADS
    } while (sent < 0 && errno == EINTR);
    if (sent < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->sends++;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(Batch_verdict_doc,
"verdict(accepts: bytes | bytearray) -> None\n\n"
"Send the verdicts of the last read's packets in one system call: packet i is accepted\n"
"when accepts[i] is non-zero, dropped otherwise (also when accepts is shorter).");

static PyObject *
Batch_verdict(Batch *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = Batch_verdict_impl(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *
Batch_stats(Batch *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{sKsKsKsKsK}", "reads", self->reads, "sends", self->sends,
                         "errors", self->errors, "enobufs", self->enobufs,
                         "truncated", self->truncated);
}

static PyObject *
Batch_pending(Batch *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->count);
}

static PyMethodDef Batch_methods[] = {
    {"read", (PyCFunction)Batch_read, METH_NOARGS, Batch_read_doc},
    {"verdict", (PyCFunction)Batch_verdict, METH_O, Batch_verdict_doc},
    {"stats", (PyCFunction)Batch_stats, METH_NOARGS,
     "stats() -> dict[str, int]: system calls made, error messages from the kernel, "
     "ENOBUFS seen and truncated datagrams, since this Batch was made."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Batch_getset[] = {
    {"pending", (getter)Batch_pending, NULL, "packets read and not yet given a verdict", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BatchType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gatekeeper.queue._nfq.Batch",
    .tp_doc = PyDoc_STR("Batch(fd, queue, size=64): batched reads and verdicts on the "
                        "nfnetlink_queue socket `fd`, bound to `queue`. It does not own fd."),
    .tp_basicsize = sizeof(Batch),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Batch_init,
    .tp_dealloc = (destructor)Batch_dealloc,
    .tp_methods = Batch_methods,
    .tp_getset = Batch_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gatekeeper.queue._nfq",
    .m_doc = "Batched reads (recvmmsg) and verdicts on an nfnetlink_queue socket.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__nfq(void)
{
    if (PyType_Ready(&BatchType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&BatchType);
    if (PyModule_AddObject(m, "Batch", (PyObject *)&BatchType) < 0) {
        Py_DECREF(&BatchType);
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_SIZE", MAX_SIZE);
    return m;
}
