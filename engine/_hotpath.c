/* Intake's hot path in C, each function the common case of a Python one that stays the reference
 * (and the whole path when this module is not built): reading MSH and PID (engine.hl7.scan) and
 * writing the ACK (engine.hl7.ack) of a message with the standard delimiters ("MSH|^~\&") in
 * ASCII, and the journal writer's duplicate-key filter (engine.journal.keyfilter).
 *
 * msh_pid(raw) returns the values scan() would read, or None for anything else (leading bytes,
 * other delimiters, a non-ASCII byte or no segment end within MSH_LIMIT bytes of MSH, an
 * object that is not bytes): scan() then reads the message in Python, which alone raises the
 * errors and the warnings. The result is checked against the Python reading on the ANS corpus
 * and on random mutations of it (tests/hl7/test_scan_native.py).
 *
 * ack(...) returns build_ack's bytes for an ACK without ERR when every value is printable ASCII
 * within ECHO_LIMIT, None otherwise (build_ack then writes it in Python, which strips control
 * characters and cuts long values): tests/hl7/test_ack_native.py.
 *
 * bloom_add / bloom_contains set and test the bits KeyFilter's Python methods set and test
 * (tests/journal/test_keyfilter.py compares the two bit arrays).
 *
 * Why C: intake does these for every message, on the reactor thread and the journal writer's.
 * In Python they cost ~9 us alone but three to four times that inside the engine under load
 * (cold caches, a GIL shared by the two threads); here each is one pass with no intermediate
 * objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: its pyconfig.h sets _GNU_SOURCE, which memmem needs */
#include <stdint.h>
#include <string.h>

#define MSH_LIMIT 4096 /* longer MSH segments take the Python path */
#define MSH_FIELDS 21  /* MSH-1 .. MSH-21: fields[0] is "MSH", fields[n - 1] is MSH-n */

typedef struct {
    const char *start;
    Py_ssize_t size;
} span;

static span first_part(span field, char separator) {
    const char *cut = memchr(field.start, separator, (size_t)field.size);
    if (cut != NULL)
        field.size = cut - field.start;
    return field;
}

/* The first `count` components (by '^') of `field`; missing ones are empty. */
static void components(span field, span *out, int count) {
    const char *p = field.start, *end = field.start + field.size;
    for (int i = 0; i < count; i++) {
        const char *cut = p < end ? memchr(p, '^', (size_t)(end - p)) : NULL;
        const char *stop = cut != NULL ? cut : end;
        out[i].start = p;
        out[i].size = p < end ? stop - p : 0;
        p = cut != NULL ? cut + 1 : end;
    }
}

/* MSH split at '|' into MSH_FIELDS spans (missing fields empty); -1 if not the common case. */
static int read_msh(const char *raw, Py_ssize_t size, span *fields) {
    if (size < 8 || memcmp(raw, "MSH|^~\\&", 8) != 0)
        return -1;
    Py_ssize_t limit = size < MSH_LIMIT ? size : MSH_LIMIT, end = 0;
    while (end < limit && raw[end] != '\r' && raw[end] != '\n') {
        if ((unsigned char)raw[end] > 0x7F)
            return -1;
        end++;
    }
    if (end == limit && limit < size)
        return -1;
    if (end > 8 && raw[8] != '|')
        return -1; /* MSH-2 longer than the four standard characters */
    int n = 0;
    Py_ssize_t field_start = 0;
    for (Py_ssize_t i = 3; i <= end && n < MSH_FIELDS; i++) {
        if (i == end || raw[i] == '|') {
            fields[n].start = raw + field_start;
            fields[n].size = i - field_start;
            n++;
            field_start = i + 1;
        }
    }
    for (; n < MSH_FIELDS; n++) {
        fields[n].start = raw;
        fields[n].size = 0;
    }
    return 0;
}

/* The first PID segment (as scan's _find_segment: "\rPID|" anywhere, else "\nPID|"); empty
 * if there is none. */
static span find_pid(const char *raw, Py_ssize_t size) {
    span pid = {raw, 0};
    const char *at = memmem(raw, (size_t)size, "\rPID|", 5);
    if (at == NULL)
        at = memmem(raw, (size_t)size, "\nPID|", 5);
    if (at == NULL)
        return pid;
    const char *start = at + 1, *end = raw + size;
    const char *cr = memchr(start, '\r', (size_t)(end - start));
    if (cr != NULL)
        end = cr;
    const char *lf = memchr(start, '\n', (size_t)(end - start));
    pid.start = start;
    pid.size = (lf != NULL ? lf : end) - start;
    return pid;
}

/* PID-3: the text between the third and fourth '|' of the segment (empty if fewer than three). */
static span pid_3(span pid) {
    span field = {pid.start, 0};
    const char *p = pid.start, *end = pid.start + pid.size;
    for (int separators = 0; separators < 3; separators++) {
        const char *cut = memchr(p, '|', (size_t)(end - p));
        if (cut == NULL)
            return field;
        p = cut + 1;
    }
    field = first_part((span){p, end - p}, '|');
    return field;
}

static PyObject *text(span s) { return PyUnicode_DecodeLatin1(s.start, s.size, NULL); }

#define VALUES 16

static PyObject *msh_pid(PyObject *module, PyObject *raw) {
    if (!PyBytes_CheckExact(raw))
        Py_RETURN_NONE;
    const char *data = PyBytes_AS_STRING(raw);
    Py_ssize_t size = PyBytes_GET_SIZE(raw);
    span f[MSH_FIELDS], type[3];
    if (read_msh(data, size, f) < 0)
        Py_RETURN_NONE;
    components(f[8], type, 3);
    span pid = find_pid(data, size);
    span ids = pid.size > 0 ? pid_3(pid) : pid;
    /* scan's order: MSH-3..7, MSH-9 components, MSH-10, -11 (first component), -12, -17,
     * MSH-18 and MSH-21 (first repetition), then PID itself and PID-3, undecoded (b"" if none) */
    PyObject *values[VALUES] = {
        text(f[2]), text(f[3]), text(f[4]), text(f[5]), text(f[6]), text(type[0]), text(type[1]),
        text(type[2]), text(f[9]), text(first_part(f[10], '^')), text(f[11]), text(f[16]),
        text(first_part(f[17], '~')), text(first_part(f[20], '~')),
        PyBytes_FromStringAndSize(pid.start, pid.size), PyBytes_FromStringAndSize(ids.start, ids.size),
    };
    PyObject *result = PyTuple_New(VALUES);
    for (int i = 0; i < VALUES; i++) {
        if (values[i] == NULL || result == NULL) { /* out of memory: drop what was made */
            for (int j = 0; j < VALUES; j++)
                Py_XDECREF(values[j]);
            Py_XDECREF(result);
            return NULL;
        }
    }
    for (int i = 0; i < VALUES; i++)
        PyTuple_SET_ITEM(result, i, values[i]);
    return result;
}

#define ECHO_LIMIT 227 /* engine.hl7.ack.ECHO_LIMIT */
#define ACK_VALUES 15
#define ACK_BUFFER (ACK_VALUES * (ECHO_LIMIT + 8) + 64)

/* A str of printable ASCII within ECHO_LIMIT: its bytes, else NULL. */
static const char *printable(PyObject *value, Py_ssize_t *size) {
    if (!PyUnicode_CheckExact(value) || !PyUnicode_IS_ASCII(value))
        return NULL;
    const char *chars = (const char *)PyUnicode_1BYTE_DATA(value);
    *size = PyUnicode_GET_LENGTH(value);
    if (*size > ECHO_LIMIT)
        return NULL;
    for (Py_ssize_t i = 0; i < *size; i++)
        if (chars[i] < 0x20 || chars[i] > 0x7E)
            return NULL;
    return chars;
}

typedef struct {
    char data[ACK_BUFFER];
    Py_ssize_t size;
    int overflow; /* never with values within ECHO_LIMIT; checked all the same */
} buffer;

static void put(buffer *b, const char *chars, Py_ssize_t size) {
    if (b->overflow || b->size + size > ACK_BUFFER) {
        b->overflow = 1;
        return;
    }
    memcpy(b->data + b->size, chars, (size_t)size);
    b->size += size;
}

/* `value`, or `otherwise` when it is empty (build_ack's `or local_app`, `or "P"`, `or "2.5"`). */
static void put_or(buffer *b, span value, span otherwise) {
    span chosen = value.size > 0 ? value : otherwise;
    put(b, chosen.start, chosen.size);
}

enum { CODE, LOCAL_APP, TIMESTAMP, ACK_CONTROL_ID, RECEIVING_APP, RECEIVING_FACILITY, SENDING_APP,
       SENDING_FACILITY, MESSAGE_CODE, TRIGGER, PROCESSING_ID, VERSION, COUNTRY, CHARSET, CONTROL_ID };

/* ack(code, local_app, timestamp, ack_control_id, receiving_app, receiving_facility, sending_app,
 *     sending_facility, message_code, trigger, processing_id, version_field, country, charset,
 *     control_id) -> bytes | None: build_ack without errors, the header's values as it reads them. */
static PyObject *ack(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != ACK_VALUES) {
        PyErr_SetString(PyExc_TypeError, "ack() takes 15 str arguments");
        return NULL;
    }
    span v[ACK_VALUES];
    for (int i = 0; i < ACK_VALUES; i++) {
        v[i].start = printable(args[i], &v[i].size);
        if (v[i].start == NULL)
            Py_RETURN_NONE;
    }
    /* MSH-9: ACK^<trigger>^ACK, or ACK alone (no trigger, or acknowledging an ACK) */
    int acknowledges_ack = v[MESSAGE_CODE].size == 3 && memcmp(v[MESSAGE_CODE].start, "ACK", 3) == 0;
    int with_trigger = v[TRIGGER].size > 0 && !acknowledges_ack;
    if (with_trigger && v[TRIGGER].size + 8 > ECHO_LIMIT)
        Py_RETURN_NONE; /* build_ack would cut it */
    buffer b; /* no initializer: it would zero the whole array */
    b.size = 0;
    b.overflow = 0;
    put(&b, "MSH|^~\\&|", 9);
    put_or(&b, v[RECEIVING_APP], v[LOCAL_APP]);
    const int msh_4_to_6[] = {RECEIVING_FACILITY, SENDING_APP, SENDING_FACILITY, TIMESTAMP};
    for (int i = 0; i < 4; i++) {
        put(&b, "|", 1);
        put(&b, v[msh_4_to_6[i]].start, v[msh_4_to_6[i]].size);
    }
    put(&b, "||ACK", 5);
    if (with_trigger) {
        put(&b, "^", 1);
        put(&b, v[TRIGGER].start, v[TRIGGER].size);
        put(&b, "^ACK", 4);
    }
    put(&b, "|", 1);
    put(&b, v[ACK_CONTROL_ID].start, v[ACK_CONTROL_ID].size);
    put(&b, "|", 1);
    put_or(&b, v[PROCESSING_ID], (span){"P", 1});
    put(&b, "|", 1);
    put_or(&b, v[VERSION], (span){"2.5", 3});
    put(&b, "|||||", 5);
    put(&b, v[COUNTRY].start, v[COUNTRY].size);
    put(&b, "|", 1);
    put(&b, v[CHARSET].start, v[CHARSET].size);
    while (b.size > 0 && b.data[b.size - 1] == '|') /* build_ack's rstrip(fs) */
        b.size--;
    put(&b, "\rMSA|", 5);
    put(&b, v[CODE].start, v[CODE].size);
    put(&b, "|", 1);
    put(&b, v[CONTROL_ID].start, v[CONTROL_ID].size);
    put(&b, "\r", 1);
    if (b.overflow)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(b.data, b.size);
}

#define BLOOM_HASHES 5 /* engine.journal.keyfilter.HASHES */

/* The bits of `key` in a filter of `bits` bits held by `array`: keyfilter's double hashing of
 * hash(key) (first + i * step, i < BLOOM_HASHES); -1 with an exception on a wrong argument. */
static int bloom_bits(PyObject *const *args, Py_ssize_t nargs, Py_buffer *array, uint64_t *positions) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "expects (array, bits, key)");
        return -1;
    }
    uint64_t bits = PyLong_AsUnsignedLongLong(args[1]);
    if (bits == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    Py_hash_t hash = PyObject_Hash(args[2]);
    if (hash == -1 && PyErr_Occurred())
        return -1;
    if (PyObject_GetBuffer(args[0], array, PyBUF_WRITABLE) < 0)
        return -1;
    if (bits == 0 || (uint64_t)array->len * 8 < bits) {
        PyBuffer_Release(array);
        PyErr_SetString(PyExc_ValueError, "the array holds fewer bits than said");
        return -1;
    }
    uint64_t h = (uint64_t)hash, position = h & 0xFFFFFFFFu, step = (h >> 32) | 1;
    for (int i = 0; i < BLOOM_HASHES; i++, position += step)
        positions[i] = position % bits;
    return 0;
}

static PyObject *bloom_add(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer array;
    uint64_t positions[BLOOM_HASHES];
    if (bloom_bits(args, nargs, &array, positions) < 0)
        return NULL;
    unsigned char *bytes = array.buf;
    for (int i = 0; i < BLOOM_HASHES; i++)
        bytes[positions[i] >> 3] |= (unsigned char)(1u << (positions[i] & 7));
    PyBuffer_Release(&array);
    Py_RETURN_NONE;
}

static PyObject *bloom_contains(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer array;
    uint64_t positions[BLOOM_HASHES];
    if (bloom_bits(args, nargs, &array, positions) < 0)
        return NULL;
    const unsigned char *bytes = array.buf;
    int found = 1;
    for (int i = 0; i < BLOOM_HASHES && found; i++)
        found = (bytes[positions[i] >> 3] >> (positions[i] & 7)) & 1;
    PyBuffer_Release(&array);
    return PyBool_FromLong(found);
}

static PyMethodDef methods[] = {
    {"msh_pid", msh_pid, METH_O, "MSH and PID values of a message in the common case, or None."},
    {"ack", (PyCFunction)(void (*)(void))ack, METH_FASTCALL, "An ACK without ERR in the common case, or None."},
    {"bloom_add", (PyCFunction)(void (*)(void))bloom_add, METH_FASTCALL, "Set a key's bits (KeyFilter.add)."},
    {"bloom_contains", (PyCFunction)(void (*)(void))bloom_contains, METH_FASTCALL, "Are a key's bits set?"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_hotpath", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__hotpath(void) { return PyModule_Create(&module); }
