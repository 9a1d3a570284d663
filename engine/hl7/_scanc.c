/* The common case of engine.hl7.scan in C: an MSH that starts the message, written with the
 * standard delimiters ("MSH|^~\&") in ASCII, and the first PID.
 *
 * msh_pid(raw) returns the values scan() would read, or None for anything else (leading bytes,
 * other delimiters, a non-ASCII byte or no segment end within MSH_LIMIT bytes of MSH, an
 * object that is not bytes): scan() then reads the message in Python, which alone raises the
 * errors and the warnings. The result is checked against the Python reading on the ANS corpus
 * and on random mutations of it (tests/hl7/test_scan_native.py).
 *
 * Why C: intake scans every message on the reactor thread. The Python reading costs ~6 us alone
 * but three to four times that inside the engine under load (cold caches, a GIL shared with the
 * journal writer); this one reads MSH and PID in one pass with no intermediate objects.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h> /* first: its pyconfig.h sets _GNU_SOURCE, which memmem needs */
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

static PyMethodDef methods[] = {
    {"msh_pid", msh_pid, METH_O, "MSH and PID values of a message in the common case, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, .m_name = "_scanc", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__scanc(void) { return PyModule_Create(&module); }
